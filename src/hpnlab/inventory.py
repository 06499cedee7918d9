"""The Ansible inventory of a lab, generated from the topology model.

    inventory/<lab>.yml
      all.vars            hpnlab_lab, hpnlab_provider, hpnlab_machine_sysctls, hpnlab_networks
      all.children
        <role>            one group per host role in lab.yml (server, client, ...)
        provider_<name>   netns / vagrant / static: the group the roles branch on
      host vars           everything the roles and testinfra need about a host, from
                          the topology: hpnlab_sysctls, hpnlab_hugepages, hpnlab_dpdk_*,
                          hpnlab_nics (ifname, network, address, mac, mtu, kernel:
                          false once DPDK takes it), hpnlab_peers (kernel NICs only)

Connection per provider:
    netns    ansible/plugins/connection/hpnlab_netns.py into namespace <lab>-<host>
    vagrant  ssh to the VM's management address with the lab's key, its host key checked
             against the one `up` recorded from the VM's console. The address comes
             from the vagrant provider: `provider.ssh_info(host)` → {host, port, user,
             key} if it has that method, else state.json `hosts.<host>.ssh` with the
             same keys, else state.json `hosts.<host>.address` as root with the lab key
             `provider.key_path` (what providers/vagrant.py records today). Until the VM
             is up none exists and generation fails naming the host.
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
import shlex
from pathlib import Path

import yaml

from .errors import HpnlabError
from .hosts.ssh import known_hosts_args, reach_of
from .topology import Lab

RESERVED_GROUPS = {"all", "ungrouped", "localhost"}
CONNECTION_VARS = ("ansible_host", "ansible_port", "ansible_user", "ansible_ssh_private_key_file",
                   "ansible_become", "ansible_become_method", "ansible_become_user",
                   "ansible_become_password", "ansible_ssh_common_args", "ansible_python_interpreter",
                   "ansible_connection", "ansible_password")
STATIC_DEFAULT = Path("inventory/static.yml")


class InventoryError(HpnlabError, RuntimeError):
    hint = "fix the inventory file it names (see inventory/static.example.yml)"


def inventory_path(lab: Lab | str, directory: str | Path = "inventory") -> Path:
    name = lab.name if isinstance(lab, Lab) else lab
    return Path(directory) / f"{name}.yml"


def role_group(role: str) -> str:
    return f"role_{role}" if role in RESERVED_GROUPS or role.startswith("provider_") else role


def host_vars(lab: Lab, host: str) -> dict:
    spec = lab.hosts[host]
    d = lab.to_dict()["hosts"][host]
    nics = d["nics"]
    for nic in nics:
        nic["kernel"] = _kernel_keeps(lab, host, nic["network"])
    peers = []
    for nic in spec.nics:
        for other in lab.networks[nic.network].members:
            if other != host and _kernel_keeps(lab, host, nic.network) and _kernel_keeps(lab, other, nic.network):
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


def _netns_connection(lab: Lab, host: str) -> dict:
    return {"ansible_connection": "hpnlab_netns", "hpnlab_netns": f"{lab.name}-{host}",
            "ansible_python_interpreter": "/usr/bin/python3"}


def _vagrant_connection(lab: Lab, host: str, provider=None) -> dict:
    info = None
    if provider is not None and hasattr(provider, "ssh_info"):
        info = provider.ssh_info(host)
    if info is None and provider is not None:
        state = provider.state.read() or {}
        entry = (state.get("hosts") or {}).get(host) or {}
        info = entry.get("ssh")
        if info is None and entry.get("address"):      # the vagrant provider: root with the lab's key
            info = {"host": entry["address"], "user": "root",
                    "key": str(getattr(provider, "key_path", "") or "")}
    if not info:
        raise InventoryError(f"host {host}: the vagrant provider has no SSH address for it "
                             f"(is the VM up? `make lab-up PROVIDER=vagrant`)")
    known = getattr(provider, "known_hosts_path", None) or "/dev/null"     # the keys `up` recorded, no others
    conn = {"ansible_connection": "ssh", "ansible_host": info["host"], "ansible_port": int(info.get("port", 22)),
            "ansible_user": info.get("user", "vagrant"), "ansible_become": info.get("user", "vagrant") != "root",
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_ssh_common_args": shlex.join([*known_hosts_args(str(known)), "-o", "IdentitiesOnly=yes"])}
    if info.get("key"):
        conn["ansible_ssh_private_key_file"] = str(info["key"])
    return conn


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


def _static_connection(lab: Lab, host: str, static: dict[str, dict]) -> dict:
    if host not in static:
        raise InventoryError(f"host {host}: not in the static inventory (hosts there: "
                             f"{', '.join(sorted(static)) or 'none'})")
    given = static[host]
    if "ansible_host" not in given:
        raise InventoryError(f"host {host}: the static inventory gives no ansible_host (its address)")
    conn = {"ansible_connection": "ssh"} | {k: v for k, v in given.items() if k in CONNECTION_VARS}
    conn.update({k: v for k, v in given.items() if k.startswith("hpnlab_")})
    # Host keys are checked, by Ansible as by hpnlab, against one file: OpenSSH keeps the
    # first value of an option, so these go before the user's own.
    checking = shlex.join(known_hosts_args(reach_of(conn)["known_hosts"]))
    conn["ansible_ssh_common_args"] = f"{checking} {conn.get('ansible_ssh_common_args') or ''}".strip()
    return conn


def _kernel_keeps(lab: Lab, host: str, network: str) -> bool:
    """Whether the host's NIC on `network` stays a kernel interface after provisioning.
    On VMs and real machines DPDK binds its NIC to uio_pci_generic/vfio-pci, which takes it
    from the kernel (no address, no ping); netns hosts give DPDK an af_packet vdev over the
    kernel's veth, so the NIC stays."""
    dpdk = lab.hosts[host].dpdk_nic
    return lab.provider == "netns" or dpdk is None or dpdk.network != network


def build(lab: Lab, provider=None, static_inventory: str | Path | None = None) -> dict:
    """The inventory as a dict (see the module docstring for its shape)."""
    static = load_static(static_inventory) if lab.provider == "static" else {}
    groups: dict[str, dict] = {}
    hosts: dict[str, dict] = {}
    for name, spec in lab.hosts.items():
        hv = host_vars(lab, name)
        if lab.provider == "netns":
            hv |= _netns_connection(lab, name)
        elif lab.provider == "vagrant":
            hv |= _vagrant_connection(lab, name, provider)
        else:
            hv |= _static_connection(lab, name, static)
            renames = hv.get("hpnlab_ifnames") or {}
            for nic in hv["hpnlab_nics"]:
                nic["ifname"] = renames.get(nic["network"], nic["ifname"])
            if hv["hpnlab_dpdk_network"] in renames:
                hv["hpnlab_dpdk_ifname"] = renames[hv["hpnlab_dpdk_network"]]
            for peer in hv["hpnlab_peers"]:
                peer["via"] = renames.get(peer["network"], peer["via"])
        hosts[name] = hv
        groups.setdefault(role_group(spec.role), {})[name] = None
    d = lab.to_dict()
    return {"all": {
        "vars": {
            "hpnlab_lab": lab.name,
            "hpnlab_provider": lab.provider,
            "hpnlab_machine_sysctls": dict(lab.machine_sysctls),
            "hpnlab_networks": d["networks"],
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


def write(lab: Lab, provider=None, directory: str | Path = "inventory",
          static_inventory: str | Path | None = None) -> Path:
    """Write inventory/<lab>.yml (only if it changed) and return its path."""
    path = inventory_path(lab, directory)
    text = HEADER.format(source=lab.source or "lab.yml", provider=lab.provider) + yaml.safe_dump(
        build(lab, provider, static_inventory), sort_keys=False, default_flow_style=False)
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
