"""The one topology model. Providers, the Vagrantfile, the Ansible inventory,
testinfra and the labs all read these objects; nothing else restates a lab."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

PROVIDERS = ("netns", "vagrant", "static")


@dataclass(frozen=True)
class Impairment:
    """Applied at every member's egress, like `tc netem` on each end: a link
    with `delay: 10ms` adds 20 ms to the round trip."""
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    rate_bps: int = 0          # 0 = unlimited

    def __bool__(self) -> bool:
        return bool(self.delay_ms or self.loss_pct or self.rate_bps)

    def describe(self) -> str:
        parts = []
        if self.delay_ms:
            parts.append(f"delay {self.delay_ms:g}ms" + (f"±{self.jitter_ms:g}ms" if self.jitter_ms else ""))
        if self.loss_pct:
            parts.append(f"loss {self.loss_pct:g}%")
        if self.rate_bps:
            parts.append(f"rate {format_rate(self.rate_bps)}")
        return ", ".join(parts) or "none"

    def to_dict(self) -> dict:
        return {"delay_ms": self.delay_ms, "jitter_ms": self.jitter_ms,
                "loss_pct": self.loss_pct, "rate_bps": self.rate_bps}


def format_rate(bps: int) -> str:
    for unit, scale in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bps >= scale and bps % scale == 0:
            return f"{bps // scale}{unit}"
    return f"{bps}bit"


@dataclass(frozen=True)
class Nic:
    host: str
    network: str
    ifname: str          # inside the host: eth1, eth2, ... (eth0 is a VM's management NIC)
    address: IPv4Interface
    mac: str
    mtu: int

    @property
    def ip(self) -> IPv4Address:
        return self.address.ip


@dataclass(frozen=True)
class Network:
    name: str
    kind: str            # "lan" (a bridge) or "link" (a veth pair between two hosts)
    subnet: IPv4Network
    mtu: int
    impair: Impairment
    members: tuple[str, ...]
    line: int = 0


@dataclass(frozen=True)
class Host:
    name: str
    role: str
    cpus: int
    memory_mb: int
    profile: str | None
    sysctls: dict[str, str]        # the profile merged with the host's own overrides
    hugepages: int
    hugepage_size: str             # "2M" or "1G"
    dpdk_network: str | None       # the network whose NIC DPDK takes
    nics: tuple[Nic, ...]
    line: int = 0

    def nic(self, network: str) -> Nic:
        for nic in self.nics:
            if nic.network == network:
                return nic
        raise KeyError(f"host {self.name} has no NIC on network {network!r}")

    @property
    def dpdk_nic(self) -> Nic | None:
        return self.nic(self.dpdk_network) if self.dpdk_network else None


@dataclass(frozen=True)
class SysctlSource:
    """Where lab.yml sets a sysctl: for the problems a provider finds with it."""
    field: str                     # "hosts.h1.sysctls.net.core.somaxconn"
    line: int
    key: str
    host: str | None               # None: machine.sysctls or a profile
    per_host: bool                 # a host's own (or its profile's), not machine-wide


@dataclass(frozen=True)
class Lab:
    name: str
    provider: str
    hosts: dict[str, Host]
    networks: dict[str, Network]
    machine_sysctls: dict[str, str] = field(default_factory=dict)
    source: Path | None = None
    vm: dict = field(default_factory=dict)      # provider settings for VMs (box, kvm, iommu, ...)
    sysctl_sources: tuple[SysctlSource, ...] = field(default=(), compare=False, repr=False)

    def with_provider(self, provider: str) -> Lab:
        from dataclasses import replace
        return replace(self, provider=provider)

    def nics_on(self, network: str) -> list[Nic]:
        return [self.hosts[h].nic(network) for h in self.networks[network].members]

    def address(self, host: str, network: str | None = None) -> IPv4Address:
        """The address of `host` on `network` (default: its first data network)."""
        h = self.hosts[host]
        return (h.nic(network) if network else h.nics[0]).ip

    def to_dict(self) -> dict:
        """A JSON-ready rendering; the Vagrantfile and the inventory read this."""
        return {
            "name": self.name,
            "provider": self.provider,
            "machine_sysctls": self.machine_sysctls,
            "vm": self.vm,
            "networks": {
                n.name: {"kind": n.kind, "subnet": str(n.subnet), "mtu": n.mtu,
                         "members": list(n.members), "impair": n.impair.to_dict()}
                for n in self.networks.values()},
            "hosts": {
                h.name: {
                    "role": h.role, "cpus": h.cpus, "memory_mb": h.memory_mb,
                    "profile": h.profile, "sysctls": h.sysctls,
                    "hugepages": h.hugepages, "hugepage_size": h.hugepage_size,
                    "dpdk_network": h.dpdk_network,
                    "dpdk_ifname": h.dpdk_nic.ifname if h.dpdk_nic else None,
                    "nics": [{"network": n.network, "ifname": n.ifname,
                              "address": str(n.address), "ip": str(n.ip),
                              "mac": n.mac, "mtu": n.mtu} for n in h.nics]}
                for h in self.hosts.values()},
        }


def stable_mac(lab: str, host: str, network: str) -> str:
    """A locally administered unicast MAC that is the same on every `up`."""
    digest = hashlib.sha256(f"{lab}/{host}/{network}".encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])
