"""The interop suite: the stack on h1's NIC (AF_PACKET, its own MAC and IP) against the
Linux kernel of h2, over the lab LAN. Each case starts the stack with one app, drives
the peer with `hpnlab.ustack.peer` (kernel sockets) or iputils, and returns
{"name", "ok", "detail"}; nothing it started outlives it.
"""
from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Self

from .. import impair
from ..interrupts import deferred_interrupts
from ..labs import pcap
from ..labs._kit import Capture, LabError, agent_python

NETWORK = "stack"


def stack_network(provider, network: str | None = None) -> str:
    """The LAN whose NIC the stack takes on h1: the one asked for, else the lab's `stack`
    LAN (labs/ustack/lab.yml), else `data` (the default lab: the kernels keep their own
    addresses on it, the stack adds its own MAC and IP beside them)."""
    nets = provider.lab.networks
    if network is not None:
        if network not in nets:
            raise LabError(f"--net {network}: lab {provider.lab.name} has no such network "
                           f"(it has {', '.join(nets)})")
        return network
    return NETWORK if NETWORK in nets else "data"


def stack_ip(host, network: str = NETWORK) -> str:
    """The stack's address: the kernel's address on that LAN + 100 (its own IP, which the
    kernel does not own, so the kernel neither answers ARP for it nor sends RSTs)."""
    iface = host.nic(network).address
    return f"{iface.ip + 100}/{iface.network.prefixlen}"


DPDK_STATE = "/var/lib/hpnlab/dpdk-nic"     # the PCI address the dpdk role bound (ansible/roles/dpdk)


def stack_driver(provider, host: str, network: str, driver: str | None = None) -> tuple[str, str]:
    """The stack's driver and device, chosen from the topology: DPDK if the lab gives the
    host's NIC on that LAN to DPDK (`dpdk: NETWORK`), else AF_PACKET on the kernel's NIC.
    Where DPDK takes the NIC from the kernel (VMs, machines) the device is the PCI address
    provisioning bound; on netns hosts DPDK reaches the veth through an af_packet vdev.
    `driver` "dpdk" on a NIC the kernel keeps: DPDK through an af_packet vdev over it."""
    h = provider.host(host)
    ifname = h.nic(network).ifname
    if provider.lab.hosts[host].dpdk_network != network:
        return driver or "afpacket", ifname
    if provider.dpdk_takes_nic:
        res = h.run(["cat", DPDK_STATE], check=False)
        if not res.ok or not res.stdout.strip():
            raise LabError(f"[{host}] DPDK's NIC on {network}: no PCI address in {DPDK_STATE} "
                           "(provision the lab: `hpnlab provision`)")
        return "dpdk", res.stdout.split()[0]
    return "dpdk", ifname


def _events(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


class HostTool:
    """`python -m MODULE ARGS` running on a host (the stack, or a kernel-side peer tool) for
    the length of a `with`; `events` are its JSON lines so far."""

    def __init__(self, host, module: str, *args, name: str = "ustack-tool", pythonpath: str | None = None):
        self.host, self.name, self.module = host, name, module
        self.argv = [*(["env", f"PYTHONPATH={pythonpath}"] if pythonpath else []),
                     agent_python(host), "-m", module, *[str(a) for a in args]]
        self.proc: Any = None           # the host's process handle while it runs

    def start(self, wait_for: str = "ready", timeout: float = 30.0) -> Self:
        self.proc = self.host.start(self.argv, name=f"{self.name}-{int(time.time() * 1000) % 100000}")
        try:
            self.wait(wait_for, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def events(self) -> list[dict]:
        return _events(self.proc.logs()[0]) if self.proc else []

    def wait(self, event: str, timeout: float = 30.0) -> dict:
        end = time.monotonic() + timeout
        while True:
            # alive looked at before the logs are read: a tool that reports and exits between
            # the two (the stack's last "stats") is then found in the next read, not missed
            alive = self.proc.alive()
            for e in self.events:
                if e.get("event") == event:
                    return e
            if not alive or time.monotonic() >= end:
                break
            time.sleep(0.05)
        out, err = self.proc.logs()
        why = f"in {timeout:g}s" if alive else "before it exited"
        raise LabError(f"[{self.host.name}] {self.module} did not report {event!r} {why}: "
                       f"{out[-600:]} {err[-800:]}")

    def stop(self) -> list[dict]:
        if self.proc is not None and self.proc.alive():
            self.proc.stop(5)
        return self.events

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class StackRun(HostTool):
    """The stack running one app on a host's NIC."""

    def __init__(self, host, ifname: str, ip: str, *app_args):
        super().__init__(host, "hpnlab.ustack.run", "--ifname", ifname, "--ip", ip, *app_args, name="ustack")


def kernel_tool(host, mode: str, *args) -> HostTool:
    """A `hpnlab.ustack.peer` tool (kernel sockets) in the background on a host."""
    return HostTool(host, "hpnlab.ustack.peer", mode, *args, name=f"ustack-peer-{mode}")


def peer(host, *args, timeout: float = 120.0) -> dict:
    res = host.run([agent_python(host), "-m", "hpnlab.ustack.peer", *[str(a) for a in args]], timeout=timeout,
                   check=False)
    events = _events(res.stdout)
    if not events:
        raise LabError(f"[{host.name}] peer {args[0]} printed nothing (exit {res.rc}): {res.stderr[-600:]}")
    return events[-1]


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def _ping(host, ip: str, *opts: str) -> tuple[bool, str]:
    res = host.run(["ping", "-n", "-q", *opts, ip], timeout=60, check=False)
    line = next((ln for ln in res.stdout.splitlines() if "transmitted" in ln), res.stdout.strip()[-200:])
    return res.ok and " 0% packet loss" in line, line


def in_order(seen: list[str], steps: tuple[str, ...]) -> bool:
    """Whether `steps` occur in `seen` in that order (others may come between)."""
    it = iter(seen)
    return all(step in it for step in steps)


def fins_crossed(segs: list, a: str, b: str, port: int) -> dict:
    """What a capture of both directions says of how the connection on `port` between a
    and b closed: `crossed` if neither FIN acknowledges the other's (each left before its
    sender had the other's: a simultaneous close); `stack_had_fin_first` if b sent its
    FIN before anything acknowledging a's FIN (b's segments reach a in the order b sent
    them, so a had b's FIN in FIN_WAIT_1 and went to CLOSING, not FIN_WAIT_2);
    `answered[ip]` if ip acknowledged the other's FIN from beyond its own FIN (sequence
    number FIN + 1: the ACK of CLOSING or TIME_WAIT). Only the order of one sender's
    segments counts, so any capture point on the path will do."""
    M = 0xFFFFFFFF
    conn = [s for s in segs if s.proto == "tcp" and port in (s.sport, s.dport) and {s.src, s.dst} == {a, b}]
    found = {ip: next((s for s in conn if s.src == ip and s.flags & pcap.FIN), None) for ip in (a, b)}
    out: dict = {"crossed": False, "stack_had_fin_first": False, "answered": {a: False, b: False}}
    fins = {ip: f for ip, f in found.items() if f is not None}
    if len(fins) < 2:
        return {**out, "detail": "no FIN from " + " or ".join(ip for ip in (a, b) if ip not in fins)}
    fin_seq = {ip: (f.seq + f.length) & M for ip, f in fins.items()}     # the FIN's own sequence number

    def acks_fin_of(s, ip) -> bool:
        return bool(s.flags & pcap.ACK) and ((s.ack - fin_seq[ip] - 1) & M) < 1 << 31

    other = {a: b, b: a}
    crossed = not acks_fin_of(fins[a], b) and not acks_fin_of(fins[b], a)
    first_ack = next((i for i, s in enumerate(conn) if s.src == b and acks_fin_of(s, a)), len(conn))
    fin_first = conn.index(fins[b]) < first_ack
    answered = {ip: any(s.src == ip and acks_fin_of(s, other[ip]) and s.seq == (fin_seq[ip] + 1) & M for s in conn)
                for ip in (a, b)}
    return {"crossed": crossed, "stack_had_fin_first": fin_first, "answered": answered,
            "fins": {ip: {"seq": fin_seq[ip], "ack": f.ack} for ip, f in fins.items()},
            "detail": f"{a}'s FIN seq {fin_seq[a]} ack {fins[a].ack}, {b}'s FIN seq {fin_seq[b]} ack {fins[b].ack}; "
                      f"{b}'s FIN reached {a} {'before' if fin_first else 'after'} the ACK of {a}'s; each "
                      f"acknowledged the other's FIN from beyond its own: "
                      f"{'yes' if all(answered.values()) else answered}"}


HOLD_QUEUE = 78                                 # the FIN hold's NFQUEUE (the delay lines' is 77)
# named and commented as impair's own, so impair.sweep finds what a killed run left
HOLD_TABLE = f"{impair.NFT_TABLE}_hold"


@contextmanager
def inbound_queued(host, ifname: str, port: int, queue: int) -> Iterator[str]:
    """For the block, a rule on `host` that hands the TCP segments arriving on `ifname`
    for `port` to NFQUEUE `queue` before its TCP sees them (bypass: they go through as
    usual while nothing reads the queue). nftables' own `queue` where the kernel has it
    (the guests'), else iptables-nft's NFQUEUE (this machine's kernel lacks nft_queue)."""
    undo = [["nft", "delete", "table", "inet", HOLD_TABLE]]
    try:
        host.run(["nft", "add", "table", "inet", HOLD_TABLE], timeout=10)
        host.run(["nft", "add", "chain", "inet", HOLD_TABLE, "input",
                  "{ type filter hook input priority 0; policy accept; }"], timeout=10)
        if host.run(["nft", "add", "rule", "inet", HOLD_TABLE, "input", "iifname", ifname, "tcp", "dport",
                     str(port), "queue", "num", str(queue), "bypass"], timeout=10, check=False).ok:
            yield "nftables queue"
        else:
            xt = ["INPUT", "-i", ifname, "-p", "tcp", "--dport", str(port), "-j", "NFQUEUE",
                  "--queue-num", str(queue), "--queue-bypass", "-m", "comment", "--comment", impair.TAG]
            host.run(["iptables-nft", "-A", *xt], timeout=10)
            undo.append(["iptables-nft", "-D", *xt])
            yield "iptables-nft NFQUEUE"
    finally:
        with deferred_interrupts():
            for argv in reversed(undo):
                host.run(argv, timeout=10, check=False)


class Suite:
    def __init__(self, provider, stack_host: str = "h1", peer_host: str = "h2", network: str | None = None,
                 bulk_bytes: int = 8 << 20, stack_extra: tuple = (), pcap_dir: Path | None = None,
                 driver: str | None = None):
        self.provider = provider
        self.h1, self.h2 = provider.host(stack_host), provider.host(peer_host)
        self.network = network = stack_network(provider, network)
        self.driver, self.ifname = stack_driver(provider, stack_host, network, driver)
        self.ip = stack_ip(self.h1, network)
        self.addr = self.ip.split("/")[0]
        self.peer_addr = str(self.h2.nic(network).address.ip)
        self.bulk_bytes = bulk_bytes
        self.stack_extra = tuple(stack_extra)       # e.g. ("--impair", "loss=5,delay=20,jitter=5")
        self.results: list[dict] = []
        self.data: dict = {}
        self.pcap_dir = pcap_dir                    # where cases keep their captures (None: thrown away)
        self.say: Any = None                        # a callable told each case's outcome as it ends
        if self.driver == "dpdk" and self.ifname == self.h1.nic(network).ifname and \
                "driver: veth" in self.h2.run(["ethtool", "-i", self.h2.nic(network).ifname], check=False).stdout:
            # DPDK's af_packet vdev hands the stack the veth's frames as they are (netns hosts,
            # hpnlab.static_machines): the peer kernel's TCP/UDP checksums left to an offload
            # that no wire ever performs (the AF_PACKET driver reads the kernel's "checksum not
            # ready" mark; the PMD drops it). The peer computes its checksums itself, as for a
            # real NIC without offload.
            self.h2.run(["ethtool", "-K", self.h2.nic(network).ifname, "tx", "off"])

    def app(self, *args, wait_for="listening") -> StackRun:
        """The stack with an app, started (it is stopped at the end of a `with`)."""
        return self._run(*args).start(wait_for)

    def _run(self, *args) -> StackRun:
        return StackRun(self.h1, self.ifname, self.ip, "--driver", self.driver, *self.stack_extra, *args)

    @contextmanager
    def pcap_paths(self, name: str) -> Iterator[tuple[Path, Path]]:
        """Where a case's captures at h1 and h2 go: `<pcap_dir>/<name>-h1.pcap` and `-h2`
        (without a pcap_dir, a directory that lives for the block)."""
        with ExitStack() as stack:
            where = self.pcap_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
            yield where / f"{name}-h1.pcap", where / f"{name}-h2.pcap"

    def capture(self, paths: tuple[Path, Path], bpf: str) -> ExitStack:
        """Both ends' captures on the stack's LAN (h1's NIC, where the stack's frames leave,
        and h2's) until the returned stack is closed (a `with`)."""
        stack = ExitStack()
        try:
            for host, path in zip((self.h1, self.h2), paths):
                stack.enter_context(Capture(self.provider, f"{host.name}:{self.network}", path, bpf))
        except BaseException:
            stack.close()
            raise
        return stack

    def record(self, name: str, fn) -> dict:
        t0 = time.monotonic()
        try:
            ok, detail = fn()
        except Exception as exc:     # noqa: BLE001 — one failing case must not hide the others
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        row = {"name": name, "ok": bool(ok), "detail": detail, "secs": round(time.monotonic() - t0, 2)}
        self.results.append(row)
        if self.say:            # on emulated VMs the suite runs for many minutes: show it going
            self.say(f"{'ok' if ok else 'FAIL'}: {name} ({row['secs']:g} s)")
        return row

    def _label(self) -> str:
        if not self.stack_extra:
            return ""
        if self.stack_extra[0] == "--impair":
            return f" under impairment ({self.stack_extra[-1]})"
        return f" ({' '.join(self.stack_extra)})"

    # -- the cases ------------------------------------------------------------------------

    def ping_cases(self) -> None:
        with self.app("--app", "echo", "--port", 7):
            self.h2.run(["ip", "neigh", "flush", "dev", self.h2.nic(self.network).ifname], check=False)
            self.record("arp: linux resolves the stack", lambda: self._arp_from_linux())
            self.record("ping 56 bytes", lambda: _ping(self.h2, self.addr, "-c", "5", "-i", "0.2"))
            self.record("ping 1472 bytes (DF, a full frame)",
                        lambda: _ping(self.h2, self.addr, "-c", "3", "-i", "0.2", "-s", "1472", "-M", "do"))
            self.record("ping 4000 bytes (fragmented both ways)",
                        lambda: _ping(self.h2, self.addr, "-c", "3", "-i", "0.2", "-s", "4000"))
            self.record("ping -f for 5 s", lambda: self._ping_flood())

    def _arp_from_linux(self):
        ok, line = _ping(self.h2, self.addr, "-c", "1")
        neigh = self.h2.run(["ip", "neigh", "show", self.addr], check=False).stdout.strip()
        return ok and "lladdr" in neigh, neigh or line

    def _ping_flood(self):
        res = self.h2.run(["ping", "-n", "-q", "-f", "-w", "5", self.addr], timeout=60, check=False)
        line = next((ln for ln in res.stdout.splitlines() if "transmitted" in ln), res.stdout[-200:])
        parts = line.split()
        sent, got = int(parts[0]), int(parts[3])
        self.data["ping_flood"] = {"sent": sent, "received": got, "line": line}
        return got >= 0.99 * sent and got > 0, line

    def ring_v3(self) -> None:
        def go():
            with self.app("--driver", "afpacket-v3", "--app", "echo", "--port", 7):
                ok, line = _ping(self.h2, self.addr, "-c", "3", "-i", "0.2")
                e = peer(self.h2, "echo", self.addr, 7, 50, 100)
            return ok and e["matched"] == e["round_trips"], f"{line}; {e['matched']}/{e['round_trips']} echoes"
        self.record("afpacket-v3 ring: ping and tcp echo", go)

    def stack_ping(self) -> None:
        def go():
            with self._run("--app", "ping", "--ping", self.peer_addr, "--count", 5, "--interval", 0.2
                           ).start("ready") as run:
                e = run.wait("ping", 30)
            return e["received"] == e["sent"] and e["peer_mac_learned"], \
                f"{e['received']}/{e['sent']} replies, rtt ms {e['rtt_ms']}, ARP learned {e['peer_mac_learned']}"
        self.record("arp + ping: the stack resolves and pings linux", go)

    def udp_echo(self) -> None:
        def go():
            with self.app("--app", "udp-echo", "--port", 7007):
                e = peer(self.h2, "udp", self.addr, 7007, 20)
            return e["matched"] == e["sent"], f"{e['matched']}/{e['sent']} datagrams echoed"
        self.record("udp echo", go)

        def unreachable():
            res = self.h2.run([agent_python(self.h2), "-c",
                               f"import socket;s=socket.socket(2,2);s.settimeout(2);s.connect(('{self.addr}',7999));"
                               "s.send(b'x')\ntry:\n s.recv(10);print('answer')\nexcept ConnectionRefusedError:"
                               "\n print('refused')\nexcept socket.timeout:\n print('timeout')"],
                              check=False, timeout=30)
            return res.stdout.strip() == "refused", f"linux saw: {res.stdout.strip() or res.stderr[-200:]}"
        with self.app("--app", "echo", "--port", 7):
            self.record("udp to a closed port: ICMP port unreachable", unreachable)

    def tcp_cases(self) -> None:
        with self.app("--app", "echo", "--port", 7):
            def echo():
                e = peer(self.h2, "echo", self.addr, 7, 200, 100)
                self.data["echo_rps_1conn"] = e["rps"]
                return e["matched"] == e["round_trips"], f"{e['matched']}/{e['round_trips']} echoes, {e['rps']} rt/s"
            self.record("tcp: linux client -> stack echo server", echo)

            def refused():
                e = peer(self.h2, "refused", self.addr, 8081)
                return e["error"] == "ECONNREFUSED", f"connect: {e['error']}"
            self.record("tcp: RST on a closed port", refused)

    def reactor(self) -> None:
        """hpnlab.servers' epoll-lt engine, unchanged, on the stack's epoll (--app reactor)."""
        def go():
            with self.app("--app", "reactor", "--port", 7):
                one = peer(self.h2, "echo", self.addr, 7, 200, 100)
                many = peer(self.h2, "concurrent", self.addr, 7, 100, timeout=120)
            return one["matched"] == one["round_trips"] and many["matched"] == 100, \
                f"{one['matched']}/{one['round_trips']} echoes on one connection ({one['rps']} rt/s); " \
                f"{many['matched']}/100 connections at once echoed"
        self.record("tcp: hpnlab.servers' reactor (epoll-lt engine) on the stack's epoll", go)

    def http(self) -> None:
        """The small HTTP/1.1 server (--app http): two requests on one keep-alive connection
        from Linux's http.client."""
        def go():
            code = ("import http.client,sys;c=http.client.HTTPConnection(sys.argv[1],80,timeout=10);out=[]\n"
                    "for p in ('/a','/b'):\n c.request('GET',p);r=c.getresponse();out.append(f'{r.status} '+"
                    "r.read().decode().strip())\nprint(' | '.join(out))")
            with self.app("--app", "http", "--port", 80):
                res = self.h2.run([agent_python(self.h2), "-c", code, self.addr], check=False, timeout=60)
            line = res.stdout.strip() or res.stderr.strip()[-300:]
            return res.ok and line.count("200 hello from the hpnlab user-space stack") == 2, line
        self.record("http/1.1: two requests on one connection from linux", go)

    def bulk(self) -> None:
        n = self.bulk_bytes

        def to_stack():
            with self.app("--app", "sink", "--port", 9000, "--once", 1) as run:
                p = peer(self.h2, "source", self.addr, 9000, n)
                s = run.wait("sink", 120)
                stats = run.wait("stats", 30)        # --once: it exits after the one connection
            whole = s["sha256"] == p["sha256"] and s["bytes"] == n
            self.data.setdefault("bulk", {})["linux_to_stack"] = {"peer": p, "stack": s, "whole": whole,
                                                                  "counters": stats.get("counters", {})}
            return whole, \
                f"{n} B, sha256 {'match' if s['sha256'] == p['sha256'] else 'MISMATCH'}, {p['mbps']} Mbit/s"
        self.record(f"tcp: {_size(n)} linux -> stack, sha256{self._label()}", to_stack)

        def from_stack():
            with kernel_tool(self.h2, "sink", 9001).start("listening") as sink:
                with self._run("--app", "source", "--connect", f"{self.peer_addr}:9001", "--bytes", n,
                               "--trace").start("ready") as run:
                    s = run.wait("source", 120)
                p = sink.wait("sink", 60)
            whole = s["sha256"] == p["sha256"] and p["bytes"] == n
            self.data.setdefault("bulk", {})["stack_to_linux"] = {"peer": p, "stack": s, "whole": whole}
            return whole, \
                f"{n} B, sha256 {'match' if s['sha256'] == p['sha256'] else 'MISMATCH'}, {p['mbps']} Mbit/s"
        self.record(f"tcp: {_size(n)} stack -> linux, sha256{self._label()}", from_stack)

    def simultaneous_open(self, sport: int = 40123, lport: int = 40321) -> None:
        """Both ends connect, each before it has the other's SYN. Not left to timing: the
        stack connects first (from `sport` to Linux's `lport`), and h2 holds its SYN and
        all after it before Linux's TCP (`peer simopen`, an NFQUEUE) until Linux has
        connected too (from `lport` to `sport`), then lets it in alone. Checked on the
        wire (the canonical SYN, SYN, SYN-ACK, SYN-ACK) and in both sides' states
        (SYN_SENT, SYN_RECEIVED, ESTABLISHED); then Linux's greeting to its FIN and a close."""
        def go():
            with self.pcap_paths("simultaneous-open") as paths:
                with self.capture(paths, f"tcp port {lport}"), \
                        kernel_tool(self.h2, "simopen", self.addr, sport, lport, HOLD_QUEUE).start("ready") as opener, \
                        inbound_queued(self.h2, self.h2.nic(self.network).ifname, lport, HOLD_QUEUE):
                    with self._run("--app", "connect", "--connect", f"{self.peer_addr}:{lport}", "--bind-port", sport,
                                   "--timeout", 30).start("ready") as run:
                        # connected, read Linux's greeting to its FIN, closed (slow on emulated VMs)
                        run.wait("stats", 120)
                        connects = [e for e in run.events if e.get("event") == "connect"]
                        opened, s = connects[0], connects[-1]   # at connect(); at the end, with the byte count
                    p = opener.wait("simopen", 60)
                kind = pcap.handshake_kind([x for x in pcap.read_pcap(paths[1]) if lport in (x.sport, x.dport)])
            path = [state for _, state in (s.get("conn") or {}).get("history", [])]
            linux = p.get("states", [])
            self.data["simultaneous_open"] = {"stack_path": path, "linux": p, "received": s.get("bytes"),
                                              "wire": kind}
            ok = (p["error"] is None and opened.get("error") is None and kind == "simultaneous"
                  and in_order(path, ("SYN_SENT", "SYN_RECEIVED", "ESTABLISHED"))
                  and in_order(linux, ("SYN_SENT", "SYN_RECV", "ESTABLISHED"))
                  and s.get("bytes") == len("hello from linux"))
            return ok, f"stack path {' > '.join(path)}; linux {' > '.join(linux)}, connect: {p['error'] or 'ok'}; " \
                       f"on the wire: {kind}; then {s.get('bytes')} B from linux and a close"
        self.record("tcp: simultaneous open with linux", go)

    def tap_cases(self, nbytes: int | None = None, tap: str = "ustap0", subnet: str = "10.77.99",
                  offload: bool = False) -> None:
        """The TAP driver on h1, against h1's own kernel through the TAP device."""
        n = nbytes or self.bulk_bytes
        kernel, addr = f"{subnet}.1", f"{subnet}.2"
        tap_args = ("--driver", "tap", "--tap-kernel-ip", f"{kernel}/24") + (("--offload",) if offload else ())
        key = "tap_offload" if offload else "tap"
        label = " with offloads" if offload else ""

        def to_stack():
            with StackRun(self.h1, tap, f"{addr}/24", *tap_args, "--app", "sink", "--port", 9000, "--once", 1
                          ).start("listening") as run:
                p = peer(self.h1, "source", addr, 9000, n)
                s = run.wait("sink", 120)
            self.data.setdefault(key, {})["kernel_to_stack"] = {"peer": p, "stack": s}
            return s["sha256"] == p["sha256"] and s["bytes"] == n, f"{n} B, {p['mbps']} Mbit/s"
        self.record(f"tap driver{label}: {_size(n)} kernel -> stack, sha256", to_stack)

        def from_stack():
            with kernel_tool(self.h1, "sink", 9002).start("listening") as sink:
                with StackRun(self.h1, tap, f"{addr}/24", *tap_args, "--app", "source", "--connect",
                              f"{kernel}:9002", "--bytes", n).start("ready") as run:
                    s = run.wait("source", 120)
                p = sink.wait("sink", 60)
            self.data.setdefault(key, {})["stack_to_kernel"] = {"peer": p, "stack": s}
            return s["sha256"] == p["sha256"] and p["bytes"] == n, f"{n} B, {p['mbps']} Mbit/s"
        self.record(f"tap driver{label}: {_size(n)} stack -> kernel, sha256", from_stack)

    def stack_to_stack(self, nbytes: int | None = None) -> None:
        """Both ends run the stack: h2's NIC is taken by a second one (h2's address + 100)."""
        n = nbytes or self.bulk_bytes
        ip2 = stack_ip(self.h2, self.network)

        def go():
            with self.app("--app", "sink", "--port", 9020, "--once", 1) as run:
                with StackRun(self.h2, self.h2.nic(self.network).ifname, ip2, *self.stack_extra, "--app", "source",
                              "--connect", f"{self.addr}:9020", "--bytes", n).start("ready") as other:
                    src = other.wait("source", 120)
                s = run.wait("sink", 60)
            self.data["stack_to_stack"] = {"source": src, "sink": s}
            return s["sha256"] == src["sha256"] and s["bytes"] == n, \
                f"{_size(n)} from {ip2.split('/')[0]} (a stack on h2), sha256 " \
                f"{'match' if s['sha256'] == src['sha256'] else 'MISMATCH'}, {s['mbps']} Mbit/s"
        self.record(f"tcp: {_size(n)} stack -> stack (both ends user space), sha256", go)

    def fuzz(self, n: int = 100000) -> None:
        """Malformed frames from h2 at the running stack, which must keep serving and count
        each as a drop, never as an internal error."""
        def go():
            with self.app("--app", "echo", "--port", 7) as run:
                mac = run.wait("ready")["mac"]
                f = peer(self.h2, "fuzz", self.h2.nic(self.network).ifname, mac, self.addr, n, timeout=300)
                e = peer(self.h2, "echo", self.addr, 7, 50, 100)
                run.stop()
                stats = run.wait("stats", 10)
            c = stats["counters"]
            drops = sum(v for k, v in c.items() if ".drop." in k)
            errors = c.get("stack.internal_error", 0)
            ring = stats.get("driver", {}).get("kernel_ring_drops", 0)
            self.data["fuzz"] = {"sent": f["sent"], "ring_drops": ring, "parser_drops": drops,
                                 "internal_errors": errors, "last_error": stats.get("last_error"),
                                 "counters": {k: v for k, v in c.items() if ".drop." in k}}
            return errors == 0 and e["matched"] == e["round_trips"] and drops > 0, \
                f"{f['sent']} frames sent, {ring} lost to a full ring, {drops} rejected by a parser check, " \
                f"the rest taken (RSTs, ICMP errors, replies); {errors} internal errors; " \
                f"then {e['matched']}/{e['round_trips']} echoes"
        self.record(f"fuzz: {n} malformed frames, then still serving", go)

    def syn_flood(self, n: int = 20000, backlog: int = 128) -> None:
        """n SYNs from addresses nobody has while a real client connects and echoes: the
        half-open queue stays at its bound, SYN cookies answer the rest, and the client's
        SYN, sent once n/4 are out, finds the queue full and gets in by a cookie."""
        def go():
            with self.app("--app", "echo", "--port", 7, "--backlog", backlog) as run:
                f = peer(self.h2, "synflood", self.addr, 7, n, timeout=300)
                run.stop()
                stats = run.wait("stats", 10)
            c = stats["counters"]
            half_open = stats["tcp_states"].get("SYN_RECEIVED", 0)
            cookies, accepted = c.get("tcp.syncookie_sent", 0), c.get("tcp.syncookie_accepted", 0)
            ring = stats.get("driver", {}).get("kernel_ring_drops", 0)
            holes = stats.get("driver", {}).get("ring_holes_skipped", 0)
            self.data["syn_flood"] = {**f, "half_open_at_end": half_open, "syncookies_sent": cookies,
                                      "syncookies_accepted": accepted, "ring_drops": ring,
                                      "maxrss_kb": stats.get("maxrss_kb"), "counters": c,
                                      "driver": stats.get("driver", {})}
            ok = (f["error"] is None and f["matched"] == 20 and 0 < f["sent_when_connecting"] < n
                  and half_open <= backlog and cookies > 0 and accepted >= 1)
            client = (f"was connected in {f['connect_secs']} s (after {f['sent_when_connected']})"
                      if f["connect_secs"] is not None else "never connected")
            return ok, f"{f['sent']} SYNs; a client began connecting after {f['sent_when_connecting']} of " \
                       f"them, {client}, got {f['matched']}/20 echoes, error {f['error']}; {cookies} SYN " \
                       f"cookies sent, {accepted} accepted; {half_open} half-open at the end (bound {backlog}); " \
                       f"{ring} frames lost to a full ring, {holes} ring slots never handed over (stepped " \
                       f"over); the stack's peak RSS {stats.get('maxrss_kb')} KiB"
        self.record(f"tcp: SYN flood ({n} SYNs), a client still connects", go)

    def concurrency(self, n: int = 1000) -> None:
        def go():
            with self.app("--app", "echo", "--port", 7, "--backlog", n):
                e = peer(self.h2, "concurrent", self.addr, 7, n, timeout=180)
            self.data["concurrent"] = e
            return e["matched"] == n, f"{e['matched']}/{n} connections echoed in {e['secs']} s"
        self.record(f"tcp: {n} concurrent connections to the stack's epoll echo server", go)

    def thread_per_connection(self, n: int = 200) -> None:
        def go():
            with self.app("--app", "thread-echo", "--port", 7, "--backlog", n):
                e = peer(self.h2, "concurrent", self.addr, 7, n, timeout=180)
            self.data["thread_per_connection"] = e
            return e["matched"] == n, f"{e['matched']}/{n} connections echoed by {n} threads in {e['secs']} s"
        self.record(f"tcp: a thread per connection, {n} at once (blocking sockets)", go)

    def zero_window(self, hold: float = 10.0, nbytes: int = 1 << 20) -> None:
        """Linux reads nothing for `hold` s with a small buffer: its window closes, the stack
        probes (persist timer), and the transfer completes once Linux reads."""
        def go():
            with self.app("--app", "source", "--port", 9010, "--bytes", nbytes, "--once", 1) as run:
                p = peer(self.h2, "zerowin", self.addr, 9010, hold, timeout=hold + 120)
                s = run.wait("source", 60)
            probes = (s.get("conn") or {}).get("stats", {}).get("zero_window_probes", 0)
            self.data["zero_window"] = {"peer": p, "probes": probes}
            return p["sha256"] == s["sha256"] and p["bytes"] == nbytes and probes > 0, \
                f"held {hold:g} s: {probes} zero-window probes, then {p['bytes']} B, sha256 " \
                f"{'match' if p['sha256'] == s['sha256'] else 'MISMATCH'}"
        self.record(f"tcp: zero window held {hold:g} s, then reopened", go)

    def simultaneous_close(self, lport: int = 40555) -> None:
        """Both ends close, each before it has the other's FIN. Not left to timing (over a
        polling driver on an emulated CPU two agreed moments missed each other): the stack
        closes first, and h2 holds its FIN and all after it before Linux's TCP
        (`peer simclose`, an NFQUEUE) until Linux has closed too, then lets it in alone.
        Checked on the wire (neither FIN acknowledges the other; the stack had
        Linux's FIN before the ACK of its own; each side acknowledged the other's FIN from
        beyond its own) and in the states each side went through: FIN_WAIT_1, CLOSING,
        TIME_WAIT (RFC 9293 §3.6, case 2)."""
        def go():
            with self.pcap_paths("simultaneous-close") as paths:
                with self.capture(paths, f"tcp port {lport}"), \
                        kernel_tool(self.h2, "simclose", lport, HOLD_QUEUE).start("listening") as closer, \
                        inbound_queued(self.h2, self.h2.nic(self.network).ifname, lport, HOLD_QUEUE):
                    # --close-at an hour ago: at once once connected, whatever h1's clock says
                    with self._run("--app", "connect", "--connect", f"{self.peer_addr}:{lport}",
                                   "--close-at", f"{time.time() - 3600:.0f}", "--timeout", 30).start("ready") as run:
                        run.wait("stats", 120)       # the app reports its "connect" events, then exits
                        s = [e for e in run.events if e.get("event") == "connect"][-1]
                    p = closer.wait("simclose", 60)
                # h2's capture: a kernel NIC's, which sees both ways (an af_packet vdev's frames
                # skip the taps of h1's veth on netns)
                wire = fins_crossed(pcap.read_pcap(paths[1]), self.addr, self.peer_addr, lport)
            path = [state for _, state in (s.get("conn") or {}).get("history", [])]
            linux = p.get("states", [])
            self.data["simultaneous_close"] = {"stack_path": path, "linux": p, "wire": wire}
            ok = (in_order(path, ("FIN_WAIT_1", "CLOSING", "TIME_WAIT")) and "FIN_WAIT_2" not in path
                  and in_order(linux, ("FIN_WAIT1", "CLOSING", "TIME_WAIT")) and "FIN_WAIT2" not in linux
                  and wire["crossed"] and wire["stack_had_fin_first"] and all(wire["answered"].values()))
            return ok, f"stack path {' > '.join(path)}; linux {' > '.join(linux)}; on the wire: FINs " \
                       f"{'crossed' if wire['crossed'] else 'did NOT cross'}, {wire['detail']}"
        self.record("tcp: simultaneous close with linux", go)

    def run_all(self, flood: bool = True) -> list[dict]:
        self.ping_cases() if flood else None
        self.stack_ping()
        self.ring_v3()
        self.udp_echo()
        self.tcp_cases()
        self.reactor()
        self.http()
        self.bulk()
        self.simultaneous_open()
        self.simultaneous_close()
        self.stack_to_stack(4 << 20)
        self.fuzz(20000)
        self.syn_flood(5000)
        self.concurrency(1000)
        self.thread_per_connection(200)
        self.zero_window(3.0)
        self.tap_cases(4 << 20)
        return self.results


def impair_args(provider, network: str | None = None) -> tuple:
    """The lab's impairment of `network`, for the stack's own egress (--impair)."""
    imp = provider.lab.networks[stack_network(provider, network)].impair
    return ("--impair", f"loss={imp.loss_pct:g},delay={imp.delay_ms:g},jitter={imp.jitter_ms:g}") if imp else ()
