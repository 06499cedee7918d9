"""What the labs share: preconditions, packet captures, kernel TCP-state traces,
and running a lab's own Python agent on several hosts at once.

    need_hosts(provider, "h1", "h2")                    # names what is missing
    with Capture(provider, "h1:eth1", out / "h1.pcap", "tcp port 40000"):
        ...
    with StateTrace(ports=range(40000, 40100)) as trace:  # netns only
        ...
    trace.events                                          # [(ts, saddr, sport, ...)]
    results = run_agents({h1: [...argv], h2: [...argv]}) # JSON each agent printed
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import HpnlabError
from ..interrupts import deferred_interrupts


class LabError(HpnlabError, RuntimeError):
    """A lab cannot run here: the message names what is missing and how to get it."""
    hint = ("the lab stopped what it had started on the hosts; `--help` of its command lists the options, "
            "`hpnlab status` the lab's hosts and networks")


# -- preconditions -----------------------------------------------------------------------------

def need_hosts(provider, *names: str) -> dict:
    # imported here: the agents import this module on the hosts, where only the standard
    # library is sure to exist (VMs and machines have no pyyaml for the topology code)
    from ..providers import ProviderError
    try:
        hosts = provider.hosts()
    except ProviderError as exc:
        raise LabError(str(exc)) from None
    missing = [n for n in names if n not in hosts]
    if missing:
        raise LabError(f"lab {provider.lab.name} has no host(s) {', '.join(missing)} "
                       f"(hosts: {', '.join(hosts)}); pass others with --hosts")
    return {n: hosts[n] for n in names}


def need_tools(*tools: str, hosts=()) -> None:
    """Tools on this machine (captures run here) and, if given, on the hosts."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise LabError(f"missing tool(s) on this machine: {', '.join(missing)} (run `make setup`)")
    for host in hosts:
        res = host.run(["sh", "-c", " ".join(f"command -v {t} >/dev/null || echo {t};" for t in tools)],
                       check=False, timeout=10)
        if res.stdout.strip():
            raise LabError(f"[{host.name}] missing tool(s): {' '.join(res.stdout.split())}")


def host_pair(provider, spec: str, roles: str, network: str | None = None, tools: tuple = ()):
    """`--hosts A,B` → (host A, host B, the network they share); checks that
    both exist and have `tools`, and names what is missing."""
    names = [n for n in spec.split(",") if n]
    if len(names) != 2:
        raise LabError(f"--hosts wants two host names, {roles}; got {spec!r}")
    hosts = need_hosts(provider, *names)
    if tools:
        need_tools(*tools, hosts=hosts.values())
    return hosts[names[0]], hosts[names[1]], shared_network(provider, names[0], names[1], network)


def shared_network(provider, a: str, b: str, network: str | None = None) -> str:
    """The network both hosts sit on (the named one, or the first they share)."""
    lab = provider.lab
    nets_a = [n.network for n in lab.hosts[a].nics]
    nets_b = {n.network for n in lab.hosts[b].nics}
    if network:
        if network not in nets_a or network not in nets_b:
            raise LabError(f"hosts {a} and {b} are not both on network {network!r}")
        return network
    for net in nets_a:
        if net in nets_b:
            return net
    raise LabError(f"hosts {a} and {b} share no network")


def set_sysctls(host, values: dict) -> dict:
    """Set per-host sysctls; returns the old values so a lab can put them back."""
    old = {}
    for key, value in values.items():
        old[key] = host.sysctl(key)
        host.run(["sysctl", "-q", "-w", f"{key}={value}"], timeout=10)
    return old


# -- packet captures ---------------------------------------------------------------------------

class Capture:
    """tcpdump on a network or HOST:NIC for the length of a `with` block.

    The capture streams to this machine (`-w -`), so it works the same for
    namespaces and for SSH hosts. Entering waits until tcpdump listens."""

    def __init__(self, provider, target: str, path: Path, bpf: str = "", snaplen: int = 128):
        self.path = Path(path)
        self.argv = provider.capture_argv(target, ["-U", "--immediate-mode", "-s", str(snaplen), "-w", "-",
                                                   *(bpf.split() if bpf else [])])
        self.proc: subprocess.Popen | None = None
        self._err: list[str] = []

    def __enter__(self):
        try:
            return self._start()
        except BaseException:          # Ctrl-C or a failure half-way: leave no tcpdump behind
            self.stop()
            raise

    def _start(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._out = open(self.path, "wb")
        # stdin a pipe held open: over SSH (static) the remote tcpdump runs until it closes
        self.proc = subprocess.Popen(self.argv, stdout=self._out, stderr=subprocess.PIPE,
                                     stdin=subprocess.PIPE, start_new_session=True)
        ready = threading.Event()

        def drain():
            for raw in self.proc.stderr:
                line = raw.decode(errors="replace")
                self._err.append(line)
                if "listening on" in line:
                    ready.set()
            ready.set()
        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(10) or self.proc.poll() is not None:
            raise LabError(f"tcpdump did not start: {''.join(self._err).strip() or 'no output'}")
        time.sleep(0.05)
        return self

    def stop(self) -> None:
        with deferred_interrupts():
            self._stop()

    def _stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            time.sleep(0.15)                      # let the last packets reach the file
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self.proc and self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        if getattr(self, "_out", None) and not self._out.closed:
            self._out.close()
        self.summary = " ".join(line.strip() for line in self._err if "packets" in line)

    def __exit__(self, *exc):
        self.stop()


# -- kernel TCP state transitions (tracefs) ------------------------------------------------------

TRACEFS = Path("/sys/kernel/tracing")


@dataclass(frozen=True)
class StateEvent:
    ts: float
    saddr: str
    sport: int
    daddr: str
    dport: int
    old: str
    new: str

    @property
    def local(self) -> str:
        return f"{self.saddr}:{self.sport}"


class StateTrace:
    """Record the kernel's `sock:inet_sock_set_state` tracepoint for some ports.

    Uses a private tracefs instance (instances/hpnlab-<pid>-<n>), so it does
    not disturb anyone else's tracing, and removes it on exit. Only where the
    lab hosts share this machine's kernel (netns provider); elsewhere
    `available` is False and the labs fall back to `ss` sampling."""

    _n = 0

    def __init__(self, ports: range | tuple[int, int]):
        lo, hi = (ports.start, ports.stop - 1) if isinstance(ports, range) else ports
        self.filter = f"(sport >= {lo} && sport <= {hi}) || (dport >= {lo} && dport <= {hi})"
        StateTrace._n += 1
        self.dir = TRACEFS / "instances" / f"hpnlab-{os.getpid()}-{StateTrace._n}"
        self.events: list[StateEvent] = []

    @staticmethod
    def available(provider=None) -> bool:
        if provider is not None and not provider.shares_kernel:    # tracefs here sees no other kernel
            return False
        return (TRACEFS / "instances").is_dir() and os.access(TRACEFS / "instances", os.W_OK) and \
            (TRACEFS / "events/sock/inet_sock_set_state").is_dir()

    @staticmethod
    def remove_stale() -> list[str]:
        """Instances left by a lab process that was killed (-9) before its cleanup ran."""
        removed = []
        for inst in (TRACEFS / "instances").glob("hpnlab-*-*"):
            pid = inst.name.split("-")[1]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                try:
                    inst.rmdir()
                    removed.append(inst.name)
                except OSError:
                    pass
        return removed

    def __enter__(self):
        self.remove_stale()
        try:
            with deferred_interrupts():     # a Ctrl-C meanwhile is raised at the block's end
                self.dir.mkdir()
                ev = self.dir / "events/sock/inet_sock_set_state"
                (ev / "filter").write_text(self.filter)
                (ev / "enable").write_text("1")
        except BaseException:           # ... and then, as after a failure half-way, the instance goes
            if self.dir.exists():
                self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        with deferred_interrupts():
            self._exit()

    def _exit(self):
        try:
            (self.dir / "events/sock/inet_sock_set_state/enable").write_text("0")
            self.events = parse_trace((self.dir / "trace").read_text())
        finally:
            try:
                self.dir.rmdir()
            except OSError:
                pass


def parse_trace(text: str) -> list[StateEvent]:
    out = []
    for line in text.splitlines():
        if "inet_sock_set_state:" not in line or "IPPROTO_TCP" not in line:
            continue
        head, body = line.split("inet_sock_set_state:", 1)
        try:
            ts = float(head.strip().rstrip(":").split()[-1])
        except ValueError:
            continue
        f = dict(kv.split("=", 1) for kv in body.split() if "=" in kv)
        out.append(StateEvent(ts, f.get("saddr", "?"), int(f.get("sport", 0)), f.get("daddr", "?"),
                              int(f.get("dport", 0)), f.get("oldstate", "?").removeprefix("TCP_"),
                              f.get("newstate", "?").removeprefix("TCP_")))
    return out


def state_paths(events: list[StateEvent]) -> dict[tuple, list[str]]:
    """Per socket (saddr, sport, daddr, dport): the states it went through, in order."""
    paths: dict[tuple, list[str]] = {}
    for e in events:
        key = (e.saddr, e.sport, e.daddr, e.dport)
        path = paths.setdefault(key, [e.old])
        if path[-1] != e.old:
            path.append(e.old)
        path.append(e.new)
    return paths


# -- the labs' agents on hosts ---------------------------------------------------------------------

DELAY_QUEUE = 77      # the NFQUEUE of a lab's delay line (the netns provider's: its NICs' numbers, eth1 → 1)


def delay_line(host, ifname: str, ports: tuple[int, int], delay_ms: float):
    """A few ms of one-way delay on a host's NIC for the block, so that two segments sent at
    about the same time (two FINs, two SYNs) cross in flight: impair.applied, so netem where
    the host's kernel has it (VMs, most machines; the data NIC carries only lab traffic),
    else hpnlab's NFQUEUE delay line for the lab's TCP ports. Removed on exit."""
    from .. import impair  # (here: the agents import this module where only the stdlib is sure)
    from ..topology.model import Impairment
    match = ["-p", "tcp", "-m", "multiport", "--ports",
             str(ports[0]) if ports[0] == ports[1] else f"{ports[0]}:{ports[1]}"]
    return impair.applied(host, ifname, Impairment(delay_ms=delay_ms), DELAY_QUEUE, match)


def agent_python(host) -> str:
    """The interpreter agents run with on a host: $HPNLAB_AGENT_PYTHON if set, else the
    host's own (this venv's on netns hosts, which share the file system; the system
    python3 on VMs and machines, where provisioning's labcode role put hpnlab)."""
    return os.environ.get("HPNLAB_AGENT_PYTHON") or host.python


def emulated(host) -> bool:
    """Whether the host's CPU is emulated (QEMU TCG), asked of the host's own Python."""
    res = host.run([agent_python(host), "-c", "from hpnlab.bench.probe import emulated_cpu; print(emulated_cpu())"],
                   timeout=host.start_timeout + 60, check=False)
    return res.stdout.strip() == "True"


def agent_argv(host, module: str, *args) -> list[str]:
    """Run `python -m hpnlab.labs.<module> ...` on a host."""
    return [agent_python(host), "-m", f"hpnlab.labs.{module}", *[str(a) for a in args]]


def run_agents(jobs: dict, timeout: float = 60.0, names: dict | None = None) -> dict:
    """Start one agent per host at once, wait for all, return {host: parsed JSON}.

    `jobs` maps Host -> argv. The agents print one JSON document on stdout.
    Whatever happens (a timeout, Ctrl-C), every started agent is stopped."""
    procs: dict = {}
    try:
        for host, argv in jobs.items():
            procs[host] = host.start(argv, name=(names or {}).get(host.name, f"lab-{host.name}-{len(procs)}"))
        deadline = time.monotonic() + timeout
        results = {}
        for host, proc in procs.items():
            try:
                rc = proc.wait(max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                raise LabError(f"[{host.name}] agent did not finish in {timeout:g}s: "
                               f"{proc.logs()[1][-500:]}") from None
            out, err = proc.logs()
            if rc != 0:
                raise LabError(f"[{host.name}] agent failed (exit {rc}): {err.strip()[-1500:]}")
            try:
                results[host.name] = json.loads(out.strip().splitlines()[-1])
            except (IndexError, json.JSONDecodeError):
                raise LabError(f"[{host.name}] agent printed no JSON: {out[-500:]} {err[-500:]}") from None
        return results
    finally:
        with deferred_interrupts():
            for proc in procs.values():
                if proc.alive():
                    proc.stop(2)


def nstat(host, counters: list[str]) -> dict[str, int]:
    """Absolute values of /proc/net/{netstat,snmp} counters on a host (`nstat -asz`,
    which leaves nstat's history file alone)."""
    data = json.loads(host.run(["nstat", "-asz", "--json"], timeout=10).stdout)
    table = data.get("kernel", data)
    return {c: int(table.get(c, 0)) for c in counters}
