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
import re
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from .errors import HpnlabError
from .topology import Lab, yamlsource

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


# What a static inventory may say about a host, checked when it is read: these values reach
# ssh's command line, the hosts' shells (as quoted arguments) and tasks run with become.
IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")      # a Linux interface name (IFNAMSIZ), as tests/infra checks it
PCI = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]")
DPDK_DRIVERS = ("uio_pci_generic", "vfio-pci", "igb_uio")    # as the dpdk role's bind tasks allow
ADDRESS = re.compile(r"[A-Za-z0-9_.:%\[\]-]+")
USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")
BOOLS = ("yes", "no", "true", "false", "on", "off", "1", "0")
STATIC_VARS = ("hpnlab_ifnames", "hpnlab_dpdk_pci", "hpnlab_dpdk_driver", "hpnlab_known_hosts")


def _var_problem(key: str, value) -> str | None:
    """Why a connection or hpnlab_* variable of a static inventory cannot be used (None: it can)."""
    def text(pattern: re.Pattern | None = None) -> bool:
        return isinstance(value, str) and bool(value.strip()) and (
            pattern is None or (bool(pattern.fullmatch(value)) and not value.startswith("-")))

    if key == "ansible_host" and not text(ADDRESS):
        return "must be an IP address or a host name"
    if key == "ansible_port" and not (isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536
                                      or isinstance(value, str) and value.isdigit() and 0 < int(value) < 65536):
        return "must be a TCP port, 1 to 65535"
    if key == "ansible_user" and not text(USER):
        return "must be a user name"
    if key in ("ansible_ssh_private_key_file", "hpnlab_known_hosts") and not text():
        return "must be a file name"
    if key == "ansible_become" and not (isinstance(value, bool) or str(value).strip().lower() in BOOLS):
        return "must be true or false"
    if key == "ansible_ssh_common_args":
        from .hosts.ssh import proxy_command
        try:
            proxy_command(value if isinstance(value, str) else None, "host")
        except ValueError as exc:
            return f"cannot be read as OpenSSH options: {exc}"
        if not isinstance(value, str):
            return "must be a string of OpenSSH options"
    if key == "hpnlab_ifnames":
        if not isinstance(value, dict):
            return "must map lab.yml networks to this machine's NIC names ({data: enp3s0f0})"
        bad = [f"{k}: {v!r}" for k, v in value.items()
               if not (isinstance(k, str) and isinstance(v, str) and IFNAME.fullmatch(v) and v not in (".", ".."))]
        if bad:
            return (f"{', '.join(bad)}: a NIC name is 1 to 15 letters, digits, '_', '.' or '-' "
                    "(a network's name as key)")
    if key == "hpnlab_dpdk_pci" and not text(PCI):
        return "must be a PCI address like 0000:03:00.1 (lower-case hex)"
    if key == "hpnlab_dpdk_driver" and value not in DPDK_DRIVERS:
        return f"must be one of {', '.join(DPDK_DRIVERS)}"
    if key.startswith("hpnlab_") and key not in STATIC_VARS:
        return f"is not one a static inventory sets (lab.yml says the rest): {', '.join(STATIC_VARS)}"
    return None


def _plain(node):
    """Plain dicts and lists (for yaml.safe_dump) of a tree with line numbers."""
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def load_static(path: str | Path | None = None) -> dict[str, dict]:
    """host → its variables, from the user's static inventory (any group layout). Every
    group, host and the variables hpnlab uses are checked first: an InventoryError names
    each `file:line: field` that is wrong."""
    path = Path(path or os.environ.get("HPNLAB_STATIC_INVENTORY") or STATIC_DEFAULT)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InventoryError(f"the static provider reads real machines from {path}: copy "
                             f"inventory/static.example.yml there and fill in your hosts") from None
    except OSError as exc:
        raise InventoryError(f"cannot read the static inventory {path}: {exc.strerror}") from None
    try:
        doc = yamlsource.load(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InventoryError(f"{path}:{line}: byte 0x{data[exc.start]:02x} is not UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InventoryError(f"{path}:{mark.line + 1 if mark else 0}: YAML: "
                             f"{getattr(exc, 'problem', None) or exc}") from None
    problems: list[str] = []
    hosts: dict[str, dict] = {}

    def mapping(node, where: str, line: int) -> yamlsource.LineDict:
        """`node` as a mapping (None: an empty one), else a problem at its line."""
        if isinstance(node, yamlsource.LineDict):
            return node
        if node is not None:
            kind = "a list" if isinstance(node, list) else f"the value {node!r}"
            problems.append(f"{path}:{getattr(node, 'line', line)}: {where}: must be a mapping, not {kind}")
        empty = yamlsource.LineDict()
        empty.line = line
        return empty

    def checked_vars(group: yamlsource.LineDict, key: str, where: str) -> dict:
        found = mapping(group.get(key), where, group.line_of(key))
        for name, value in found.items():
            problem = _var_problem(name, value) if isinstance(name, str) else "a variable's name must be a string"
            if problem:
                problems.append(f"{path}:{found.line_of(name)}: {where}.{name}: {problem}")
        return found

    def walk(group: yamlsource.LineDict, where: str, inherited: dict) -> None:
        gvars = {**inherited, **_plain(checked_vars(group, "vars", f"{where}.vars"))}
        members = mapping(group.get("hosts"), f"{where}.hosts", group.line_of("hosts"))
        for name in members:
            hvars = checked_vars(members, name, f"{where}.hosts.{name}")
            hosts[str(name)] = {**hosts.get(str(name), {}), **gvars, **_plain(hvars)}
        children = mapping(group.get("children"), f"{where}.children", group.line_of("children"))
        for child in children:
            walk(mapping(children[child], f"{where}.children.{child}", children.line_of(child)),
                 f"{where}.children.{child}", gvars)

    top = mapping(doc, "the file", 1)
    for name in ["all"] if "all" in top else list(top):
        walk(mapping(top[name], str(name), top.line_of(name)), str(name), {})
    if problems:
        raise InventoryError("invalid static inventory:\n" + "\n".join(problems))
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
