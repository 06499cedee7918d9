"""lab.yml → validated Lab model, or a TopologyError naming field and line.

The loader runs in stages, each on what the one before it made:

    parse        YAML, with the line of every key and item (yamlsource)
    schema       types, ranges and unknown keys, section by section → a draft
    references   hosts, networks and profiles named elsewhere exist
    addressing   subnets carved from the pool, addresses checked and assigned → the Lab
    provider     what only the provider can judge (`Provider.validate`): sysctls against
                 the kernel that will apply them, its own settings (vm: is the vagrant
                 provider's), the limits of its substrate (interface name lengths)

It stops after the first stage that found problems and reports all of that stage's at
once: a problem of a later stage may only be a consequence of an earlier one.
"""
from __future__ import annotations

import dataclasses
import re
import reprlib
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, ip_address, ip_network
from pathlib import Path

import yaml

from ..errors import HpnlabError
from . import sysctls, yamlsource
from .model import PROVIDERS, Host, Impairment, Lab, Network, Nic, SysctlSource, stable_mac
from .yamlsource import LineDict, LineList

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
LAB_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,30}$")
ROLE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
DEFAULT_POOL = "10.77.0.0/16"
DEFAULT_MTU = 1500

TOP_KEYS = {"name", "provider", "subnet_pool", "machine", "profiles", "hosts", "networks", "vm"}
HOST_KEYS = {"role", "cpus", "memory", "profile", "sysctls", "hugepages", "hugepage_size", "dpdk"}
NETWORK_KEYS = {"type", "subnet", "mtu", "hosts", "impair"}
IMPAIR_KEYS = {"delay", "jitter", "loss", "rate"}
MACHINE_KEYS = {"sysctls"}
class _ShortRepr(reprlib.Repr):
    """Values quoted in messages: bounded, however big or nested (also a tree that YAML
    aliases make 10**8 items long). reprlib picks a method by the type's name, so the
    loader's line-numbered lists and dicts need theirs, or it calls the full repr()."""

    def repr_LineList(self, obj, level):    # noqa: N802 (reprlib's naming)
        return self.repr_list(obj, level)

    def repr_LineDict(self, obj, level):    # noqa: N802
        return self.repr_dict(obj, level)


_short = _ShortRepr()
_short.maxstring = _short.maxother = 60
_short.maxlevel = 3        # reprlib's 6 levels of 6 items each still make 6**6 items


def show(value) -> str:
    return _short.repr(value)


def part(key) -> str:
    """A key as part of a field path: bare when it is a plain word, quoted otherwise."""
    return key if isinstance(key, str) and re.fullmatch(r"[^\s'\"]{1,64}", key) else show(key)


class TopologyError(HpnlabError, ValueError):
    """Every problem found in a lab file, one `file:line: field: message` per line."""
    exit_code = 2
    hint = "fix each `file:line: field` named above (lab.yml reference: README.md)"

    def __init__(self, problems: list[str], hint: str | None = None):
        self.problems = problems
        super().__init__("invalid lab file:\n" + "\n".join(problems), hint=hint)


class _Checker:
    def __init__(self, source: str):
        self.source = source
        self.problems: list[str] = []

    def error(self, line: int, field: str, message: str) -> None:
        self.problems.append(f"{self.source}:{line}: {field}: {message}")

    def mapping(self, value, line, field, allowed) -> LineDict:
        if value is None:
            return LineDict()
        if not isinstance(value, LineDict):
            self.error(line, field, f"must be a mapping, got {type_name(value)}")
            return LineDict()
        for key in value:
            if key not in allowed:
                self.error(value.line_of(key), f"{field}.{part(key)}" if field else part(key),
                           f"unknown key (allowed: {', '.join(sorted(allowed))})")
        return value

    def typed(self, value, line, field, kind, default=None):
        if value is None:
            return default
        problem = type_problem(value, kind)
        if problem:
            self.error(line, field, problem)
            return default
        return value


def type_problem(value, kind: type) -> str | None:
    """Why `value` (from YAML) is not of `kind` (int, str or bool), or None."""
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        return f"must be an integer, got {type_name(value)} {show(value)}"
    if kind is str and not isinstance(value, str):
        return f"must be a string, got {type_name(value)} {show(value)}"
    if kind is bool and not isinstance(value, bool):
        return f"must be true or false, got {show(value)}"
    return None


def type_name(value) -> str:
    return {dict: "a mapping", LineDict: "a mapping", list: "a list", LineList: "a list",
            str: "a string", int: "an integer", float: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__)


_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(us|ms|s)?\s*$")
_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)?\s*$", re.I)
_PERCENT = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*%?\s*$")


MAX_DELAY_MS = 3_600_000           # an hour: anything longer is a typo
MAX_RATE_BPS = 10**12              # 1 Tbit/s


def _finite(number: float, limit: float, what: str, value) -> float:
    if not 0 <= number <= limit:     # also NaN and inf
        raise ValueError(f"{what} out of range: {show(value)}")
    return number


def parse_duration_ms(value) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _finite(float(min(max(value, -1), MAX_DELAY_MS + 1)), MAX_DELAY_MS, "duration", value)
    m = _DURATION.match(value) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"not a duration: {show(value)} (use e.g. 10ms, 500us, 1s)")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, None: 1.0}[m.group(2)]
    return _finite(float(m.group(1)) * scale, MAX_DELAY_MS, "duration", value)


def parse_rate_bps(value) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return int(_finite(min(max(value, -1), MAX_RATE_BPS + 1), MAX_RATE_BPS, "rate", value))
    m = _RATE.match(value) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"not a rate: {show(value)} (use e.g. 100mbit, 1gbit)")
    unit = (m.group(2) or "bit").lower()
    scale = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9,
             "bps": 8, "kbps": 8 * 10**3, "mbps": 8 * 10**6, "gbps": 8 * 10**9}[unit]
    return int(_finite(float(m.group(1)) * scale, MAX_RATE_BPS, "rate", value))


def parse_percent(value) -> float:
    m = _PERCENT.match(value) if isinstance(value, str) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(min(max(value, -1), 101))
    elif m:
        number = float(m.group(1))
    else:
        raise ValueError(f"not a percentage: {show(value)} (use e.g. 1% or 0.5%)")
    return _finite(number, 100, "percentage", value)


def load_lab(path: str | Path, provider: str | None = None, name: str | None = None) -> Lab:
    """Load and validate a lab file; `provider`/`name` override the file's own."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TopologyError([f"{path}: cannot read lab file: {exc.strerror}"],
                            hint="name the lab file with --lab FILE (make: LAB=FILE)") from None
    return parse_lab(decode(data, str(path)), str(path), provider=provider, path=path, name=name)


def decode(data: bytes, source: str) -> str:
    """A lab file's text (UTF-8), or a TopologyError naming the line and byte that is not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        problem = f"{source}:{line}: column {column}: byte 0x{data[exc.start]:02x} is not UTF-8"
        raise TopologyError([problem], hint="save the lab file as UTF-8") from None


def _yaml_problem(exc: yaml.YAMLError, text: str, source: str) -> str:
    if isinstance(exc, yaml.reader.ReaderError):     # a character YAML does not allow
        line = text.count("\n", 0, exc.position) + 1
        return f"{source}:{line}: YAML: character U+{exc.character:04X} is not allowed in a YAML file"
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark else 0
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context_mark", None)
    if context and context.line + 1 != line:
        problem += f" ({getattr(exc, 'context', '') or 'started'} on line {context.line + 1})"
    return f"{source}:{line}: YAML: {problem}"


def parse_lab(text: str, source: str = "lab.yml", provider: str | None = None,
              path: Path | None = None, name: str | None = None) -> Lab:
    doc = _parse(text, source)
    draft = _stage(source, _schema, doc, provider, name)
    _stage(source, _references, draft)
    lab = _stage(source, _addressing, draft, path)
    _stage(source, _provider_checks, lab)
    return lab


def _stage(source: str, run, *args):
    """One stage with its own checker; the problems it found, if any, end the load."""
    c = _Checker(source)
    result = run(c, *args)
    if c.problems:
        raise TopologyError(c.problems)
    return result


def _parse(text: str, source: str) -> LineDict:
    try:
        doc = yamlsource.load(text)
    except yaml.YAMLError as exc:
        raise TopologyError([_yaml_problem(exc, text, source)]) from None
    except RecursionError:
        raise TopologyError([f"{source}:1: YAML: nested too deeply"]) from None
    if not isinstance(doc, LineDict):
        raise TopologyError([f"{source}:1: the lab file must be a mapping with hosts: and networks:"])
    return doc


# -- schema: each section on its own ------------------------------------------------------

@dataclass
class _Sysctl:
    field: str
    line: int
    key: str
    value: str


@dataclass
class _Member:
    host: str
    address: IPv4Address | None
    line: int


@dataclass
class _NetworkDraft:
    name: str
    line: int
    kind: str
    mtu: int
    subnet: IPv4Network | None
    subnet_line: int
    members: list[_Member]
    hosts_line: int
    impair: Impairment


@dataclass
class _HostDraft:
    name: str
    line: int
    role: str
    cpus: int
    memory: int
    hugepages: int
    hugepage_size: str
    profile: str | None
    profile_line: int
    sysctls: list[_Sysctl]
    dpdk: str | None
    dpdk_line: int


@dataclass
class _Draft:
    name: str
    provider: str
    pool: IPv4Network
    vm: LineDict
    machine: list[_Sysctl]
    profiles: dict[str, list[_Sysctl]]
    hosts: dict[str, _HostDraft] = dataclasses.field(default_factory=dict)
    networks: dict[str, _NetworkDraft] = dataclasses.field(default_factory=dict)


def _schema(c: _Checker, doc: LineDict, provider: str | None, name: str | None) -> _Draft:
    source = c.source
    c.mapping(doc, 1, "", TOP_KEYS)
    name = name or c.typed(doc.get("name"), doc.line_of("name"), "name", str, "hpnlab")
    if not LAB_NAME_RE.fullmatch(name):
        c.error(doc.line_of("name"), "name",
                f"{show(name)} must be lower-case letters, digits, '_' or '-', start with a letter, ≤31 chars")
    chosen = provider or c.typed(doc.get("provider"), doc.line_of("provider"), "provider", str, "netns")
    if chosen not in PROVIDERS:
        where = "--provider" if provider else f"{doc.line_of('provider')}: provider"
        raise TopologyError([f"{source}:{where}: unknown provider {show(chosen)} (valid: {', '.join(PROVIDERS)})"])

    vm_node = doc.get("vm")     # the vagrant provider's settings: its validate() judges them
    vm = c.mapping(vm_node, doc.line_of("vm"), "vm", set(vm_node) if isinstance(vm_node, dict) else set())
    machine = c.mapping(doc.get("machine"), doc.line_of("machine"), "machine", MACHINE_KEYS)
    profiles_node = doc.get("profiles")
    profiles_node = c.mapping(profiles_node, doc.line_of("profiles"), "profiles",
                              set(profiles_node) if isinstance(profiles_node, dict) else set())
    profiles = {pname: _sysctl_table(c, body, pline, f"profiles.{pname}")
                for pname, pline, body in _named(c, profiles_node, "profiles", "profile")}

    pool_text = c.typed(doc.get("subnet_pool"), doc.line_of("subnet_pool"), "subnet_pool", str, DEFAULT_POOL)
    try:
        pool = IPv4Network(pool_text)
        if pool.prefixlen > 30:
            raise ValueError(f"{pool} is too small to carve subnets from (/30 or larger)")
    except ValueError as exc:
        c.error(doc.line_of("subnet_pool"), "subnet_pool", str(exc))
        pool = IPv4Network(DEFAULT_POOL)

    draft = _Draft(name, chosen, pool, vm,
                   _sysctl_table(c, machine.get("sysctls"), machine.line_of("sysctls"), "machine.sysctls"), profiles)

    hosts_node = doc.get("hosts")
    if not isinstance(hosts_node, LineDict) or not hosts_node:
        got = "" if hosts_node is None else f", got {type_name(hosts_node)} {show(hosts_node)}"
        c.error(doc.line_of("hosts"), "hosts", f"a lab needs at least one host (a mapping of name → settings){got}")
        hosts_node = LineDict()
    for hname, hline, body in _named(c, hosts_node, "hosts", "host"):
        draft.hosts[hname] = _host(c, hname, hline, body)

    networks_node = doc.get("networks")
    if networks_node is None:
        networks_node = LineDict()
    elif not isinstance(networks_node, LineDict):
        c.error(doc.line_of("networks"), "networks", f"must be a mapping, got {type_name(networks_node)}")
        networks_node = LineDict()
    for nname, nline, body in _named(c, networks_node, "networks", "network"):
        draft.networks[nname] = _network(c, nname, nline, body)
    return draft


def _named(c: _Checker, node: LineDict, section: str, what: str):
    """(name, line, body) of each entry of a section whose name is one; the others are reported."""
    for name, body in node.items():
        if not isinstance(name, str) or not NAME_RE.match(name):
            c.error(node.line_of(name), f"{section}.{part(name)}",
                    f"{what} names are lower-case letters, digits and '_', starting with a letter")
            continue
        yield name, node.line_of(name), body


def _host(c: _Checker, hname: str, hline: int, body) -> _HostDraft:
    field = f"hosts.{hname}"
    body = c.mapping(body, hline, field, HOST_KEYS)
    role = c.typed(body.get("role"), body.line_of("role"), f"{field}.role", str, "host")
    if not ROLE_RE.fullmatch(role):     # it names an Ansible group
        c.error(body.line_of("role"), f"{field}.role",
                f"{show(role)} must be letters, digits and '_', starting with a letter (an Ansible group name)")
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
        c.error(body.line_of("hugepage_size"), f"{field}.hugepage_size", f"must be 2M or 1G, got {show(hp_size)}")
    return _HostDraft(hname, hline, role, cpus, memory, hugepages, hp_size,
                      c.typed(body.get("profile"), body.line_of("profile"), f"{field}.profile", str),
                      body.line_of("profile"),
                      _sysctl_table(c, body.get("sysctls"), body.line_of("sysctls"), f"{field}.sysctls"),
                      c.typed(body.get("dpdk"), body.line_of("dpdk"), f"{field}.dpdk", str), body.line_of("dpdk"))


def _network(c: _Checker, nname: str, nline: int, body) -> _NetworkDraft:
    field = f"networks.{nname}"
    body = c.mapping(body, nline, field, NETWORK_KEYS)
    kind = c.typed(body.get("type"), body.line_of("type"), f"{field}.type", str, "lan")
    if kind not in ("lan", "link"):
        c.error(body.line_of("type"), f"{field}.type", f"must be lan or link, got {show(kind)}")
    mtu = c.typed(body.get("mtu"), body.line_of("mtu"), f"{field}.mtu", int, DEFAULT_MTU)
    if not 68 <= mtu <= 65535:
        c.error(body.line_of("mtu"), f"{field}.mtu", f"must be 68..65535, got {mtu}")
    subnet: IPv4Network | None = None
    written_subnet = body.get("subnet")
    if written_subnet is not None and not isinstance(written_subnet, str):
        c.error(body.line_of("subnet"), f"{field}.subnet",
                f"must be a string like 10.77.1.0/24, got {type_name(written_subnet)} {show(written_subnet)}")
    elif written_subnet is not None:
        try:
            written_net = ip_network(written_subnet, strict=True)
            if not isinstance(written_net, IPv4Network) or written_net.num_addresses < 4:
                raise ValueError("must be an IPv4 network with room for hosts (/30 or larger)")
            subnet = written_net
        except ValueError as exc:
            c.error(body.line_of("subnet"), f"{field}.subnet", str(exc))
    written = body.get("hosts")
    members = _members(c, written, body.line_of("hosts"), f"{field}.hosts")
    listed = len(written) if isinstance(written, (list, dict)) else 0   # what was written, valid or not
    if kind == "link" and listed != 2:
        c.error(body.line_of("hosts"), f"{field}.hosts", f"a link joins exactly 2 hosts, got {listed}")
    impair = _impairment(c, body.get("impair"), body.line_of("impair"), f"{field}.impair")
    return _NetworkDraft(nname, nline, kind, mtu, subnet, body.line_of("subnet"), members, body.line_of("hosts"),
                         impair)


def _members(c: _Checker, node, line: int, field: str) -> list[_Member]:
    """The hosts a network lists (a list, or a mapping host → address), addresses parsed."""
    if isinstance(node, LineList):
        items = [(h, None, node.line_of(i)) for i, h in enumerate(node)]
    elif isinstance(node, LineDict):
        items = [(h, a, node.line_of(h)) for h, a in node.items()]
    else:
        c.error(line, field, f"list the hosts, or map host → address; got {type_name(node)} {show(node)}")
        return []
    members = []
    for host, addr, hline in items:
        parsed = None
        if addr is not None:
            try:
                parsed = ip_address(addr.split("/")[0]) if isinstance(addr, str) else None
            except ValueError:
                pass
            if not isinstance(parsed, IPv4Address):
                c.error(hline, f"{field}.{part(host)}", f"not an IPv4 address: {show(addr)}")
                parsed = None
        members.append(_Member(host, parsed, hline))
    return members


def _sysctl_table(c: _Checker, node, line: int, field: str) -> list[_Sysctl]:
    node = c.mapping(node, line, field, set(node or {}) if isinstance(node, dict) else set())
    table = []
    for key, value in node.items():
        kline = node.line_of(key)
        problem = sysctls.key_problem(key)
        if problem:
            c.error(kline, f"{field}.{part(key)}", problem)
            continue
        if not isinstance(value, (str, int, float)) or value is None:
            c.error(kline, f"{field}.{key}", "a sysctl is `dotted.key: value` (a number or a string), "
                    f"got {type_name(value)} {show(value)}")
            continue
        value = " ".join(str(v) for v in value.split()) if isinstance(value, str) else str(int(value)) \
            if isinstance(value, bool) else str(value)
        table.append(_Sysctl(f"{field}.{key}", kline, key, value))
    return table


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
    if values.get("jitter") and not values.get("delay"):
        c.error(node.line_of("jitter"), f"{field}.jitter", "jitter needs a delay")
    return Impairment(delay_ms=values.get("delay", 0.0), jitter_ms=values.get("jitter", 0.0),
                      loss_pct=values.get("loss", 0.0), rate_bps=int(values.get("rate", 0)))


# -- references: what one section names, another has ---------------------------------------

def _references(c: _Checker, d: _Draft) -> None:
    for net in d.networks.values():
        field, seen = f"networks.{net.name}.hosts", set()
        known = []
        for m in net.members:
            if not isinstance(m.host, str) or m.host not in d.hosts:
                c.error(m.line, f"{field}.{part(m.host)}",
                        f"unknown host {show(m.host)} (hosts: {', '.join(map(show, d.hosts))})")
            elif m.host in seen:
                c.error(m.line, f"{field}.{m.host}", "host listed twice")
            else:
                seen.add(m.host)
                known.append(m)
        net.members = known
        if net.kind == "lan" and not known:
            c.error(net.hosts_line, field, "a LAN needs at least one host")
    for host in d.hosts.values():
        field = f"hosts.{host.name}"
        if host.profile is not None and host.profile not in d.profiles:
            c.error(host.profile_line, f"{field}.profile",
                    f"unknown profile {show(host.profile)} (profiles: {', '.join(d.profiles) or 'none'})")
        joined = [n.name for n in d.networks.values() if any(m.host == host.name for m in n.members)]
        if host.dpdk is not None and host.dpdk not in joined:
            c.error(host.dpdk_line, f"{field}.dpdk", f"{host.name} has no NIC on network {show(host.dpdk)} "
                    f"(its networks: {', '.join(joined) or 'none'})")


# -- addressing: subnets and addresses, then the model --------------------------------------

def _addressing(c: _Checker, d: _Draft, path: Path | None) -> Lab:
    # Explicit subnets first, then carve /24s for the rest from the pool.
    taken: list[tuple[IPv4Network, str]] = []
    for net in d.networks.values():
        if net.subnet is None:
            continue
        for other, oname in taken:
            if net.subnet.overlaps(other):
                c.error(net.subnet_line, f"networks.{net.name}.subnet",
                        f"{net.subnet} overlaps {other} of network {oname}")
        taken.append((net.subnet, net.name))
    free = (s for s in d.pool.subnets(new_prefix=max(24, d.pool.prefixlen))
            if not any(s.overlaps(t) for t, _ in taken))
    networks: dict[str, Network] = {}
    addresses: dict[str, list[tuple[str, IPv4Interface]]] = {}     # host → (network, address), in order
    for net in d.networks.values():
        subnet = net.subnet or next(free, None)
        if subnet is None:
            c.error(net.line, f"networks.{net.name}", f"subnet_pool {d.pool} has no free /24 left")
            continue
        assigned = _assign(c, net, subnet)
        for m, address in zip(net.members, assigned):
            addresses.setdefault(m.host, []).append((net.name, address))
        networks[net.name] = Network(net.name, net.kind, subnet, net.mtu, net.impair,
                                     tuple(m.host for m in net.members), net.line)
    if c.problems:
        return None     # type: ignore[return-value]  # (_stage raises on the problems)

    hosts = {}
    for h in d.hosts.values():
        nics = tuple(Nic(h.name, nname, f"eth{index}", address, stable_mac(d.name, h.name, nname),
                         networks[nname].mtu)
                     for index, (nname, address) in enumerate(addresses.get(h.name, []), start=1))
        merged = {s.key: s.value for s in (d.profiles[h.profile] if h.profile else [])}
        merged.update({s.key: s.value for s in h.sysctls})
        hosts[h.name] = Host(h.name, h.role, h.cpus, h.memory, h.profile, merged, h.hugepages, h.hugepage_size,
                             h.dpdk, nics, h.line)
    sources = [SysctlSource(s.field, s.line, s.key, None, per_host=False) for s in d.machine]
    sources += [SysctlSource(s.field, s.line, s.key, None, per_host=True) for table in d.profiles.values()
                for s in table]
    sources += [SysctlSource(s.field, s.line, s.key, h.name, per_host=True) for h in d.hosts.values()
                for s in h.sysctls]
    return Lab(name=d.name, provider=d.provider, hosts=hosts, networks=networks,
               machine_sysctls={s.key: s.value for s in d.machine}, source=path, vm=d.vm,
               sysctl_sources=tuple(sources))


def _assign(c: _Checker, net: _NetworkDraft, subnet: IPv4Network) -> list[IPv4Interface]:
    """Each member's address on `subnet`: the one written for it, else the first free one."""
    used: dict[IPv4Address, str] = {}
    for m in net.members:
        if m.address is None:
            continue
        where = f"networks.{net.name}.hosts.{m.host}"
        if m.address not in subnet or m.address in (subnet.network_address, subnet.broadcast_address):
            c.error(m.line, where, f"address {m.address} is not a host address of {subnet}")
        elif m.address in used:
            c.error(m.line, where, f"address {m.address} is already used by {used[m.address]}")
        used[m.address] = m.host
    auto = (a for a in subnet.hosts() if a not in used)
    assigned = []
    for m in net.members:
        address = m.address if m.address is not None else next(auto, None)
        if address is None:
            c.error(net.line, f"networks.{net.name}", f"subnet {subnet} has too few addresses for its hosts")
            break
        assigned.append(IPv4Interface(f"{address}/{subnet.prefixlen}"))
    return assigned


# -- provider: what only the provider that runs the lab can judge ------------------------------

def _provider_checks(c: _Checker, lab: Lab) -> None:
    from ..providers import provider_class  # (here: the providers build on this package)
    for line, where, message in provider_class(lab.provider).validate(lab):
        c.error(line, where, message)
