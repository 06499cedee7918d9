"""lab.yml → validated Lab model, or a TopologyError naming field and line."""
from __future__ import annotations

import re
from ipaddress import IPv4Interface, IPv4Network, ip_address, ip_network
from pathlib import Path

import yaml

from . import sysctls, yamlsource
from .model import PROVIDERS, Host, Impairment, Lab, Network, Nic, stable_mac
from .yamlsource import LineDict, LineList

IFNAMSIZ = 15          # usable characters in a Linux interface name
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
LAB_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,30}$")
DEFAULT_POOL = "10.77.0.0/16"
DEFAULT_MTU = 1500

TOP_KEYS = {"name", "provider", "subnet_pool", "machine", "profiles", "hosts", "networks", "vm"}
HOST_KEYS = {"role", "cpus", "memory", "profile", "sysctls", "hugepages", "hugepage_size", "dpdk"}
NETWORK_KEYS = {"type", "subnet", "mtu", "hosts", "impair"}
IMPAIR_KEYS = {"delay", "jitter", "loss", "rate"}
MACHINE_KEYS = {"sysctls"}
VM_KEYS = {"box": str, "driver": str, "iommu": bool, "nat": bool, "management_subnet": str,
           "tb_size_mb": int}


class TopologyError(ValueError):
    """Every problem found in a lab file, one `file:line: field: message` per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class _Checker:
    def __init__(self, source: str):
        self.source = source
        self.problems: list[str] = []

    def error(self, line: int, field: str, message: str) -> None:
        self.problems.append(f"{self.source}:{line}: {field}: {message}")

    def mapping(self, value, line, field, allowed) -> LineDict:
        if value is None:
            return LineDict()
        if not isinstance(value, dict):
            self.error(line, field, f"must be a mapping, got {type_name(value)}")
            return LineDict()
        for key in value:
            if key not in allowed:
                self.error(value.line_of(key), f"{field}.{key}" if field else str(key),
                           f"unknown key (allowed: {', '.join(sorted(allowed))})")
        return value

    def typed(self, value, line, field, kind, default=None):
        if value is None:
            return default
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            self.error(line, field, f"must be an integer, got {type_name(value)} {value!r}")
            return default
        if kind is str and not isinstance(value, str):
            self.error(line, field, f"must be a string, got {type_name(value)} {value!r}")
            return default
        if kind is bool and not isinstance(value, bool):
            self.error(line, field, f"must be true or false, got {value!r}")
            return default
        return value


def type_name(value) -> str:
    return {dict: "a mapping", LineDict: "a mapping", list: "a list", LineList: "a list",
            str: "a string", int: "an integer", float: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__)


_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(us|ms|s)?\s*$")
_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)?\s*$", re.I)
_PERCENT = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*%?\s*$")


def parse_duration_ms(value) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"not a duration: {value!r} (use e.g. 10ms, 500us, 1s)")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, None: 1.0}[m.group(2)]


def parse_rate_bps(value) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _RATE.match(str(value))
    if not m:
        raise ValueError(f"not a rate: {value!r} (use e.g. 100mbit, 1gbit)")
    unit = (m.group(2) or "bit").lower()
    scale = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9,
             "bps": 8, "kbps": 8 * 10**3, "mbps": 8 * 10**6, "gbps": 8 * 10**9}[unit]
    return int(float(m.group(1)) * scale)


def parse_percent(value) -> float:
    m = _PERCENT.match(str(value))
    if not m or isinstance(value, bool):
        raise ValueError(f"not a percentage: {value!r} (use e.g. 1% or 0.5%)")
    return float(m.group(1))


def load_lab(path: str | Path, provider: str | None = None, name: str | None = None) -> Lab:
    """Load and validate a lab file; `provider`/`name` override the file's own."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TopologyError([f"{path}: cannot read lab file: {exc.strerror}"]) from None
    return parse_lab(text, str(path), provider=provider, path=path, name=name)


def parse_lab(text: str, source: str = "lab.yml", provider: str | None = None,
              path: Path | None = None, name: str | None = None) -> Lab:
    try:
        doc = yamlsource.load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 0
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context_mark", None)
        if context and context.line + 1 != line:
            problem += f" ({getattr(exc, 'context', '') or 'started'} on line {context.line + 1})"
        raise TopologyError([f"{source}:{line}: YAML: {problem}"]) from None
    c = _Checker(source)
    if not isinstance(doc, dict):
        raise TopologyError([f"{source}:1: the lab file must be a mapping with hosts: and networks:"])
    c.mapping(doc, 1, "", TOP_KEYS)

    name = name or c.typed(doc.get("name"), doc.line_of("name"), "name", str, "hpnlab")
    if not LAB_NAME_RE.match(name):
        c.error(doc.line_of("name"), "name",
                f"{name!r} must be lower-case letters, digits, '_' or '-', start with a letter, ≤31 chars")
    chosen = provider or c.typed(doc.get("provider"), doc.line_of("provider"), "provider", str, "netns")
    if chosen not in PROVIDERS:
        where = "--provider" if provider else f"{doc.line_of('provider')}: provider"
        raise TopologyError([f"{source}:{where}: unknown provider {chosen!r} (valid: {', '.join(PROVIDERS)})"])

    vm = c.mapping(doc.get("vm"), doc.line_of("vm"), "vm", set(VM_KEYS))
    vm_settings = {k: c.typed(v, vm.line_of(k), f"vm.{k}", VM_KEYS[k]) for k, v in vm.items() if k in VM_KEYS}

    machine = c.mapping(doc.get("machine"), doc.line_of("machine"), "machine", MACHINE_KEYS)
    machine_sysctls = _sysctl_table(c, machine.get("sysctls"), machine.line_of("sysctls"),
                                    "machine.sysctls", per_host=False)

    profiles_node = c.mapping(doc.get("profiles"), doc.line_of("profiles"), "profiles", set(doc.get("profiles") or {}))
    profiles = {pname: _sysctl_table(c, body, profiles_node.line_of(pname), f"profiles.{pname}", per_host=True)
                for pname, body in profiles_node.items()}

    hosts_node = doc.get("hosts")
    if not isinstance(hosts_node, dict) or not hosts_node:
        c.error(doc.line_of("hosts"), "hosts", "a lab needs at least one host (a mapping of name → settings)")
        hosts_node = LineDict()
    networks_node = doc.get("networks")
    if networks_node is None:
        networks_node = LineDict()
    elif not isinstance(networks_node, dict):
        c.error(doc.line_of("networks"), "networks", f"must be a mapping, got {type_name(networks_node)}")
        networks_node = LineDict()

    for hname in hosts_node:
        if not isinstance(hname, str) or not NAME_RE.match(hname):
            c.error(hosts_node.line_of(hname), f"hosts.{hname}",
                    "host names are lower-case letters, digits and '_', starting with a letter")

    pool_text = c.typed(doc.get("subnet_pool"), doc.line_of("subnet_pool"), "subnet_pool", str, DEFAULT_POOL)
    try:
        pool = IPv4Network(pool_text)
    except ValueError as exc:
        c.error(doc.line_of("subnet_pool"), "subnet_pool", str(exc))
        pool = IPv4Network(DEFAULT_POOL)

    networks, memberships = _networks(c, networks_node, hosts_node, pool)
    hosts = _hosts(c, name, hosts_node, profiles, networks, memberships)
    if c.problems:
        raise TopologyError(c.problems)
    return Lab(name=name, provider=chosen, hosts=hosts, networks=networks,
               machine_sysctls=machine_sysctls, source=path, vm=vm_settings)


def _sysctl_table(c: _Checker, node, line: int, field: str, per_host: bool,
                  ifnames: tuple[str, ...] = ()) -> dict[str, str]:
    node = c.mapping(node, line, field, set(node or {}) if isinstance(node, dict) else set())
    table = {}
    for key, value in node.items():
        kline = node.line_of(key)
        if not isinstance(key, str) or isinstance(value, (dict, list)) or value is None:
            c.error(kline, f"{field}.{key}", "a sysctl is `dotted.key: value` (a number or a string)")
            continue
        value = " ".join(str(v) for v in value.split()) if isinstance(value, str) else str(int(value)) \
            if isinstance(value, bool) else str(value)
        norm = sysctls.normalise(key, ifnames or tuple(f"eth{i}" for i in range(1, 10)))
        if not sysctls.exists(norm):
            c.error(kline, f"{field}.{key}", "no such sysctl on this kernel")
        elif per_host and not sysctls.per_netns(norm):
            c.error(kline, f"{field}.{key}",
                    "is machine-wide, not per network namespace: put it under machine.sysctls")
        table[key] = value
    return table


def _networks(c: _Checker, node: LineDict, hosts_node: LineDict, pool: IPv4Network):
    networks: dict[str, Network] = {}
    memberships: dict[str, list[tuple[str, IPv4Interface | None, int]]] = {}
    drafts = []
    for nname, body in node.items():
        nline = node.line_of(nname)
        field = f"networks.{nname}"
        if not isinstance(nname, str) or not NAME_RE.match(nname):
            c.error(nline, field, "network names are lower-case letters, digits and '_', starting with a letter")
            continue
        body = c.mapping(body, nline, field, NETWORK_KEYS)
        kind = c.typed(body.get("type"), body.line_of("type"), f"{field}.type", str, "lan")
        if kind not in ("lan", "link"):
            c.error(body.line_of("type"), f"{field}.type", f"must be lan or link, got {kind!r}")
        mtu = c.typed(body.get("mtu"), body.line_of("mtu"), f"{field}.mtu", int, DEFAULT_MTU)
        if not 68 <= mtu <= 65535:
            c.error(body.line_of("mtu"), f"{field}.mtu", f"must be 68..65535, got {mtu}")
        subnet = None
        if body.get("subnet") is not None:
            try:
                subnet = ip_network(str(body["subnet"]), strict=True)
                if subnet.version != 4 or subnet.num_addresses < 4:
                    raise ValueError("must be an IPv4 network with room for hosts (/30 or larger)")
            except ValueError as exc:
                c.error(body.line_of("subnet"), f"{field}.subnet", str(exc))
                subnet = None
        members = _members(c, body.get("hosts"), body.line_of("hosts"), f"{field}.hosts", hosts_node)
        listed = len(body.get("hosts") or ())   # count what was written, valid or not
        if kind == "link" and listed != 2:
            c.error(body.line_of("hosts"), f"{field}.hosts", f"a link joins exactly 2 hosts, got {listed}")
        if kind == "lan" and not members:
            c.error(body.line_of("hosts"), f"{field}.hosts", "a LAN needs at least one host")
        impair = _impairment(c, body.get("impair"), body.line_of("impair"), f"{field}.impair")
        drafts.append((nname, nline, kind, mtu, subnet, members, impair, body.line_of("subnet")))

    # Explicit subnets first, then carve /24s for the rest from the pool.
    taken: list[tuple[IPv4Network, str, int]] = []
    for nname, _nl, _k, _m, subnet, _mem, _i, sline in drafts:
        if subnet is None:
            continue
        for other, oname, _ in taken:
            if subnet.overlaps(other):
                c.error(sline, f"networks.{nname}.subnet", f"{subnet} overlaps {other} of network {oname}")
        taken.append((subnet, nname, sline))
    free = (s for s in pool.subnets(new_prefix=max(24, pool.prefixlen))
            if not any(s.overlaps(t) for t, _, _ in taken))
    for nname, nline, kind, mtu, subnet, members, impair, sline in drafts:
        if subnet is None:
            subnet = next(free, None)
            if subnet is None:
                c.error(nline, f"networks.{nname}", f"subnet_pool {pool} has no free /24 left")
                continue
        used: dict = {}
        addresses: list[IPv4Interface | None] = []
        for host, addr, aline in members:
            if addr is None:
                addresses.append(None)
                continue
            if addr not in subnet or addr in (subnet.network_address, subnet.broadcast_address):
                c.error(aline, f"networks.{nname}.hosts.{host}", f"address {addr} is not a host address of {subnet}")
            elif addr in used:
                c.error(aline, f"networks.{nname}.hosts.{host}", f"address {addr} is already used by {used[addr]}")
            used[addr] = host
            addresses.append(IPv4Interface(f"{addr}/{subnet.prefixlen}"))
        auto = (a for a in subnet.hosts() if a not in used)
        for i, (host, _addr, _aline) in enumerate(members):
            if addresses[i] is None:
                nxt = next(auto, None)
                if nxt is None:
                    c.error(nline, f"networks.{nname}", f"subnet {subnet} has too few addresses for its hosts")
                    break
                addresses[i] = IPv4Interface(f"{nxt}/{subnet.prefixlen}")
        for (host, _a, aline), address in zip(members, addresses):
            memberships.setdefault(host, []).append((nname, address, aline))
        networks[nname] = Network(nname, kind, subnet, mtu, impair, tuple(h for h, _, _ in members), nline)
    return networks, memberships


def _members(c: _Checker, node, line: int, field: str, hosts_node: LineDict):
    members = []
    if isinstance(node, list):
        items = [(h, None, node.line_of(i)) for i, h in enumerate(node)]
    elif isinstance(node, dict):
        items = [(h, a, node.line_of(h)) for h, a in node.items()]
    else:
        c.error(line, field, "list the hosts, or map host → address")
        return members
    seen = set()
    for host, addr, hline in items:
        if not isinstance(host, str) or host not in hosts_node:
            c.error(hline, f"{field}.{host}", f"unknown host {host!r} (hosts: {', '.join(map(str, hosts_node))})")
            continue
        if host in seen:
            c.error(hline, f"{field}.{host}", "host listed twice")
            continue
        seen.add(host)
        parsed = None
        if addr is not None:
            try:
                parsed = ip_address(str(addr).split("/")[0])
            except ValueError:
                c.error(hline, f"{field}.{host}", f"not an IPv4 address: {addr!r}")
        members.append((host, parsed, hline))
    return members


def _impairment(c: _Checker, node, line: int, field: str) -> Impairment:
    node = c.mapping(node, line, field, IMPAIR_KEYS)
    values = {}
    for key, parse in (("delay", parse_duration_ms), ("jitter", parse_duration_ms),
                       ("loss", parse_percent), ("rate", parse_rate_bps)):
        if node.get(key) is None:
            continue
        try:
            values[key] = parse(node[key])
        except ValueError as exc:
            c.error(node.line_of(key), f"{field}.{key}", str(exc))
            continue
        if values[key] < 0 or (key == "loss" and values[key] > 100):
            c.error(node.line_of(key), f"{field}.{key}", f"out of range: {node[key]!r}")
    if values.get("jitter") and not values.get("delay"):
        c.error(node.line_of("jitter"), f"{field}.jitter", "jitter needs a delay")
    return Impairment(delay_ms=values.get("delay", 0.0), jitter_ms=values.get("jitter", 0.0),
                      loss_pct=values.get("loss", 0.0), rate_bps=int(values.get("rate", 0)))


def _hosts(c: _Checker, lab: str, node: LineDict, profiles, networks, memberships) -> dict[str, Host]:
    hosts = {}
    for hname, body in node.items():
        if not isinstance(hname, str) or not NAME_RE.match(hname):
            continue
        hline = node.line_of(hname)
        field = f"hosts.{hname}"
        body = c.mapping(body, hline, field, HOST_KEYS)
        role = c.typed(body.get("role"), body.line_of("role"), f"{field}.role", str, "host")
        cpus = c.typed(body.get("cpus"), body.line_of("cpus"), f"{field}.cpus", int, 1)
        memory = c.typed(body.get("memory"), body.line_of("memory"), f"{field}.memory", int, 512)
        if cpus < 1:
            c.error(body.line_of("cpus"), f"{field}.cpus", f"must be ≥ 1, got {cpus}")
        if memory < 128:
            c.error(body.line_of("memory"), f"{field}.memory", f"MiB, must be ≥ 128, got {memory}")
        hugepages = c.typed(body.get("hugepages"), body.line_of("hugepages"), f"{field}.hugepages", int, 0)
        if hugepages < 0:
            c.error(body.line_of("hugepages"), f"{field}.hugepages", f"must be ≥ 0, got {hugepages}")
        hp_size = c.typed(body.get("hugepage_size"), body.line_of("hugepage_size"),
                          f"{field}.hugepage_size", str, "2M")
        if hp_size not in ("2M", "1G"):
            c.error(body.line_of("hugepage_size"), f"{field}.hugepage_size", f"must be 2M or 1G, got {hp_size!r}")

        joined = memberships.get(hname, [])
        nics = []
        for index, (nname, address, _aline) in enumerate(joined, start=1):
            ifname = f"eth{index}"
            port = f"{hname}-{nname}"      # the host's port on a LAN bridge, in the switch namespace
            if networks[nname].kind == "lan" and len(port) > IFNAMSIZ:
                c.error(hline, field, f"interface name {port!r} (host-network) is {len(port)} characters; "
                        f"Linux allows {IFNAMSIZ}: shorten the host or network name")
            nics.append(Nic(hname, nname, ifname, address, stable_mac(lab, hname, nname), networks[nname].mtu))
        ifnames = tuple(n.ifname for n in nics)

        profile = c.typed(body.get("profile"), body.line_of("profile"), f"{field}.profile", str)
        merged = {}
        if profile is not None:
            if profile not in profiles:
                c.error(body.line_of("profile"), f"{field}.profile",
                        f"unknown profile {profile!r} (profiles: {', '.join(profiles) or 'none'})")
            else:
                merged.update(profiles[profile])
        merged.update(_sysctl_table(c, body.get("sysctls"), body.line_of("sysctls"),
                                    f"{field}.sysctls", per_host=True, ifnames=ifnames))

        dpdk = c.typed(body.get("dpdk"), body.line_of("dpdk"), f"{field}.dpdk", str)
        if dpdk is not None and dpdk not in {n.network for n in nics}:
            c.error(body.line_of("dpdk"), f"{field}.dpdk",
                    f"{hname} has no NIC on network {dpdk!r} (its networks: {', '.join(n.network for n in nics) or 'none'})")
        hosts[hname] = Host(hname, role, cpus, memory, profile, merged, hugepages, hp_size,
                            dpdk, tuple(nics), hline)
    return hosts
