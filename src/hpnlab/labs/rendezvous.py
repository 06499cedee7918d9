"""The NAT lab's rendezvous host (STUN-, signalling- and TURN-like in one
process): what runs on `rz`, reached by the peers only through their NATs.

  UDP/TCP PORT      observe: answer with the source endpoint seen (the peer's
                    public mapping toward PORT; UDP also sends filtering probes
                    from PORT+2 and from PORT on a second address, where the peer
                    never sent to); UDP also pairs two peers of one
                    try (`pair`): each gets the other's observations and a shared
                    start time, on this host's clock, which the peers read (`time`)
  UDP/TCP PORT+1    observe only: a second destination, so a peer sees whether its
                    NAT maps per destination and by how much the port moves
  UDP/TCP PORT+2    relay: UDP datagrams, or a spliced TCP stream, between the two
                    peers of one try (the fallback when no direct path opens)
"""
from __future__ import annotations

import argparse
import json
import selectors
import signal
import socket
import time

from ._agent import listener


class Rendezvous:
    def __init__(self, port: int, lead: float, alt_ip: str | None = None):
        self.port, self.lead = port, lead
        self.sel = selectors.DefaultSelector()
        self.pairs: dict[str, dict] = {}            # try key -> {name: what it told us}
        self.starts: dict[str, float] = {}
        self.relay_to: dict[str, dict] = {}         # try key -> {name: its UDP relay endpoint}
        self.tcp_wait: dict[str, tuple] = {}        # try key -> (first TCP relay client, bytes it sent early)
        self.log = {"observed": 0, "paired": 0, "relayed_datagrams": 0, "relayed_streams": 0}
        self.udp: dict[int, socket.socket] = {}
        for off in (0, 1, 2):
            u = self.udp[off] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            u.bind(("0.0.0.0", port + off))
            self.sel.register(u, selectors.EVENT_READ, ("udp", off))
            self.sel.register(listener(port + off, backlog=64), selectors.EVENT_READ, ("listen", off))
        self.alt: socket.socket | None = None       # PORT on a second address: only ever sends
        if alt_ip:
            self.alt = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.alt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.alt.bind((alt_ip, port))

    def serve(self, stop: list) -> None:
        while not stop:
            for key, _ in self.sel.select(0.1):
                kind, arg = key.data
                getattr(self, "_" + kind)(key.fileobj, arg)

    def _udp(self, s: socket.socket, off: int) -> None:
        try:
            data, addr = s.recvfrom(4096)
            msg = json.loads(data)
        except (OSError, ValueError):
            return
        if off == 2:
            self._relay_datagram(s, addr, msg)
        elif msg.get("op") == "observe":
            self.log["observed"] += 1
            s.sendto(json.dumps({"seen": addr}).encode(), addr)
            if off == 0:                # from where the peer never sent to: does its NAT let it in?
                self.udp[2].sendto(b'{"filter-probe": "other port"}', addr)
                if self.alt:
                    self.alt.sendto(b'{"filter-probe": "other address"}', addr)
        elif msg.get("op") == "time":  # the peers read this clock: theirs may be seconds off (VMs)
            s.sendto(json.dumps({"t": time.time(), "k": msg.get("k")}).encode(), addr)
        elif msg.get("op") == "pair" and off == 0:
            seen = self.pairs.setdefault(msg["key"], {})
            seen[msg["name"]] = msg["info"]
            if msg["peer"] in seen:
                if msg["key"] not in self.starts:
                    self.starts[msg["key"]] = time.time() + self.lead
                    self.log["paired"] += 1
                s.sendto(json.dumps({"key": msg["key"], "peer": seen[msg["peer"]],
                                     "start_at": self.starts[msg["key"]]}).encode(), addr)

    def _relay_datagram(self, s: socket.socket, addr, msg: dict) -> None:
        ends = self.relay_to.setdefault(msg["key"], {})
        ends[msg["name"]] = addr
        to = ends.get(msg["peer"])
        if to is not None:
            self.log["relayed_datagrams"] += 1
            s.sendto(json.dumps({"data": msg["data"], "seen": to}).encode(), to)

    def _listen(self, s: socket.socket, off: int) -> None:
        c, addr = s.accept()
        if off < 2:                 # observe: one line, then the peer closes
            self.log["observed"] += 1
            try:
                c.sendall(json.dumps({"seen": addr}).encode() + b"\n")
            except OSError:
                c.close()
                return
            self.sel.register(c, selectors.EVENT_READ, ("drain", None))
        else:
            self.sel.register(c, selectors.EVENT_READ, ("relay_hello", b""))

    def _drain(self, c: socket.socket, _) -> None:
        try:
            more = c.recv(1024)
        except OSError:
            more = b""
        if not more:
            self.sel.unregister(c)
            c.close()

    def _relay_hello(self, c: socket.socket, buf: bytes) -> None:
        """A TCP relay client's first line names its try; the second client of a
        try is spliced to the first."""
        try:
            chunk = c.recv(1024)
        except OSError:
            chunk = b""
        self.sel.unregister(c)
        if not chunk:
            c.close()
            return
        buf += chunk
        if b"\n" not in buf:
            self.sel.register(c, selectors.EVENT_READ, ("relay_hello", buf))
            return
        line, rest = buf.split(b"\n", 1)
        key = json.loads(line)["key"]
        if key not in self.tcp_wait:
            self.tcp_wait[key] = (c, rest)
            return
        other, early = self.tcp_wait.pop(key)
        self.log["relayed_streams"] += 1
        for a, b, first in ((c, other, rest), (other, c, early)):
            b.sendall(json.dumps({"seen": b.getpeername()}).encode() + b"\n" + first)
            a.setblocking(False)
            self.sel.register(a, selectors.EVENT_READ, ("splice", b))

    def _splice(self, a: socket.socket, b: socket.socket) -> None:
        try:
            chunk = a.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if chunk:
            try:
                b.setblocking(True)
                b.sendall(chunk)
                b.setblocking(False)
                return
            except OSError:
                pass
        for s in (a, b):            # one side is gone: the stream ends for both
            try:
                self.sel.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="hpnlab.labs.nat rendezvous")
    ap.add_argument("--port", type=int, required=True, help="first of the three ports (observe, observe, relay)")
    ap.add_argument("--lead", type=float, default=0.15, help="seconds from pairing to a try's start time")
    ap.add_argument("--alt-ip", help="a second address of this host: filtering probes from it too")
    a = ap.parse_args(argv)
    stop: list = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    rz = Rendezvous(a.port, a.lead, a.alt_ip)
    print(json.dumps({"listening": True}), flush=True)
    rz.serve(stop)
    print(json.dumps(rz.log), flush=True)
    return 0
