"""The Ansible inventory of a lab, generated from the topology model.

    inventory/<lab>.yml
      all.vars            hpnlab_lab, hpnlab_provider, hpnlab_shares_kernel (the provider's hook:
                          the hosts run on the controller's kernel and file system),
                          hpnlab_machine_sysctls, hpnlab_networks
      all.children
        <role>            one group per host role in lab.yml (server, client, ...)
        provider_<name>   netns / vagrant / static (for --limit; the roles branch on
                          hpnlab_shares_kernel, not on a provider's name)
      host vars           everything the roles and testinfra need about a host, from
                          the topology: hpnlab_sysctls, hpnlab_hugepages, hpnlab_dpdk_*,
                          hpnlab_nics (ifname, network, address, mac, mtu, kernel:
                          false once DPDK takes it), hpnlab_peers (kernel NICs only)

Connection per provider (each provider's `ansible_connection(host)` hook gives it):
    netns    ansible/plugins/connection/hpnlab_netns.py into namespace <lab>-<host>
    vagrant  ssh as root with the lab's key to the VM's management address (from the lab's
             state: until the VM is up there is none and generation fails naming the host),
             its host key checked against the one `up` recorded from the VM's console
    static   ssh, with the connection variables (ansible_host, ansible_user, ansible_port,
             ansible_ssh_private_key_file, ansible_become, ...) taken from the user's
             inventory (inventory/static.yml; see inventory/static.example.yml). There a
             host may also rename its NICs (`hpnlab_ifnames: {data: enp3s0f1}`) and name
             the DPDK NIC's PCI address (`hpnlab_dpdk_pci`). Host keys are checked against
             `hpnlab_known_hosts` (or the UserKnownHostsFile of ansible_ssh_common_args, or
             the user's known_hosts): StrictHostKeyChecking=yes goes first in the SSH options.

Nothing else restates the lab: the inventory is rewritten from lab.yml every time.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from .errors import HpnlabError
from .topology import Lab

if TYPE_CHECKING:       # providers/static.py reads the user's inventory through this module
    from .providers import Provider

RESERVED_GROUPS = {"all", "ungrouped", "localhost"}
STATIC_DEFAULT = Path("inventory/static.yml")


class InventoryError(HpnlabError, RuntimeError):
    hint = "fix the inventory file it names (see inventory/static.example.yml)"


def inventory_path(lab: Lab | str, directory: str | Path = "inventory") -> Path:
    name = lab.name if isinstance(lab, Lab) else lab
    return Path(directory) / f"{name}.yml"


def role_group(role: str) -> str:
    return f"role_{role}" if role in RESERVED_GROUPS or role.startswith("provider_") else role


def host_vars(lab: Lab, model: dict, host: str, dpdk_takes_nic: bool) -> dict:
    """The host's variables from the topology (`model`: lab.to_dict(), made once for all
    hosts). `dpdk_takes_nic`: DPDK's NIC leaves the kernel (no address, no ping over it)
    once provisioned (the provider's hook of that name)."""
    def kernel_keeps(host: str, network: str) -> bool:
        dpdk = lab.hosts[host].dpdk_nic
        return not dpdk_takes_nic or dpdk is None or dpdk.network != network

    spec = lab.hosts[host]
    nics = model["hosts"][host]["nics"]
    for nic in nics:
        nic["kernel"] = kernel_keeps(host, nic["network"])
    peers = []
    for nic in spec.nics:
        for other in lab.networks[nic.network].members:
            if other != host and kernel_keeps(host, nic.network) and kernel_keeps(other, nic.network):
                peer = lab.hosts[other].nic(nic.network)
                peers.append({"host": other, "network": nic.network, "ip": str(peer.ip),
                              "via": nic.ifname})
    dpdk = spec.dpdk_nic
    return {
        "hpnlab_host": host,
        "hpnlab_role": spec.role,
        "hpnlab_profile": spec.profile,
        "hpnlab_cpus": spec.cpus,
        "hpnlab_memory_mb": spec.memory_mb,
        "hpnlab_sysctls": dict(spec.sysctls),
        "hpnlab_hugepages": spec.hugepages,
        "hpnlab_hugepage_size": spec.hugepage_size,
        "hpnlab_dpdk_network": spec.dpdk_network,
        "hpnlab_dpdk_ifname": dpdk.ifname if dpdk else None,
        "hpnlab_dpdk_mac": dpdk.mac if dpdk else None,
        "hpnlab_nics": nics,
        "hpnlab_peers": peers,
    }


def load_static(path: str | Path | None = None) -> dict[str, dict]:
    """host → its variables, from the user's static inventory (any group layout)."""
    path = Path(path or os.environ.get("HPNLAB_STATIC_INVENTORY") or STATIC_DEFAULT)
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise InventoryError(f"the static provider reads real machines from {path}: copy "
                             f"inventory/static.example.yml there and fill in your hosts") from None
    hosts: dict[str, dict] = {}

    def walk(group: dict, inherited: dict) -> None:
        group = group or {}
        gvars = {**inherited, **(group.get("vars") or {})}
        for name, hvars in (group.get("hosts") or {}).items():
            hosts[name] = {**hosts.get(name, {}), **gvars, **(hvars or {})}
        for child in (group.get("children") or {}).values():
            walk(child, gvars)

    for top in doc.values() if "all" not in doc else [doc["all"]]:
        walk(top, {})
    return hosts


def build(provider: Provider, static_inventory: str | Path | None = None) -> dict:
    """The inventory of the provider's lab as a dict (see the module docstring for its shape)."""
    provider = provider.using_inventory(static_inventory)
    lab = provider.lab
    model = lab.to_dict()
    groups: dict[str, dict] = {}
    hosts: dict[str, dict] = {}
    for name, spec in lab.hosts.items():
        hosts[name] = host_vars(lab, model, name, provider.dpdk_takes_nic) | provider.ansible_connection(name)
        groups.setdefault(role_group(spec.role), {})[name] = None
    return {"all": {
        "vars": {
            "hpnlab_lab": lab.name,
            "hpnlab_provider": lab.provider,
            "hpnlab_shares_kernel": provider.shares_kernel,     # what the roles branch on
            "hpnlab_machine_sysctls": dict(lab.machine_sysctls),
            "hpnlab_networks": model["networks"],
            "hpnlab_source": str(lab.source.resolve()) if lab.source else "",
        },
        "hosts": hosts,
        "children": {
            **{g: {"hosts": members} for g, members in groups.items()},
            f"provider_{lab.provider}": {"hosts": {h: None for h in lab.hosts}},
        },
    }}


HEADER = ("# Generated by hpnlab from {source} — do not edit; it is rewritten on every\n"
          "# `hpnlab provision` / `hpnlab verify`. Provider: {provider}.\n")


def write(provider: Provider, directory: str | Path = "inventory",
          static_inventory: str | Path | None = None) -> Path:
    """Write inventory/<lab>.yml (only if it changed) and return its path."""
    lab = provider.lab
    path = inventory_path(lab, directory)
    text = HEADER.format(source=lab.source or "lab.yml", provider=lab.provider) + yaml.safe_dump(
        build(provider, static_inventory), sort_keys=False, default_flow_style=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


def read(path: str | Path) -> dict[str, dict]:
    """host → merged variables (all.vars + host vars) of a generated inventory."""
    doc = yaml.safe_load(Path(path).read_text())
    top = doc["all"]
    return {h: {**(top.get("vars") or {}), **(hv or {})} for h, hv in (top.get("hosts") or {}).items()}


def remove(lab: Lab, directory: str | Path = "inventory") -> Path | None:
    """Delete the lab's generated inventory (never a file a person wrote); its path if it was there."""
    path = inventory_path(lab, directory)
    if path.exists() and path.read_text().startswith(HEADER.split(" from ")[0]):
        path.unlink()
        return path
    return None
