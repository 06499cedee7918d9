"""The protocol core, sans-I/O: `receive(frame, now)` takes a frame, `tick(now)` runs the
timers, `take_tx()` hands over the frames to send. No sockets, no clock, no driver here.

Every frame's path is counted (`counters`): `ether.rx`, `ipv4.drop.bad_checksum`,
`tcp.rst_sent`, ... — the parsers raise ParseError naming its counter, the stack counts
`<layer>.drop.<reason>`. Nothing a frame carries can raise out of `receive`: an
unexpected exception is counted as `stack.internal_error` and kept in `last_error`.
"""
from __future__ import annotations

import ipaddress
import struct
import traceback
from collections import Counter
from collections.abc import Callable

from .errors import ParseError
from .proto import arp, ether, icmp, ipv4, tcp, udp
from .timers import TimerHeap

Outgoing = bytes | tuple[bytes, bytes]      # a frame, or (virtio-net header, frame) for the offloads

# struct virtio_net_hdr: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset (host order)
VNET_HDR = struct.Struct("=BBHHHH")
VNET_NEEDS_CSUM, VNET_GSO_TCPV4 = 1, 1


class Stack:
    def __init__(self, mac: bytes, ip: str, prefix_len: int = 24, mtu: int = 1500, gateway: str | None = None,
                 arp_lifetime: float = 60.0):
        self.mac = mac
        self.ip = ipaddress.IPv4Address(ip).packed
        self.network = ipaddress.IPv4Network(f"{ip}/{prefix_len}", strict=False)
        self.broadcast = self.network.broadcast_address.packed
        self._mask, self._net = int(self.network.netmask), int(self.network.network_address)
        self.gateway = ipaddress.IPv4Address(gateway).packed if gateway else None
        self.mtu = mtu
        self.offload = False        # the driver takes TCP segments to cut and checksum (virtio-net header)
        self.now = 0.0
        self.timers = TimerHeap()
        self.counters: Counter = Counter()    # shared with the ARP cache and the reassembler
        self.tx: list[Outgoing] = []
        self.last_error: str | None = None
        self._ip_id = 0
        self.arp = arp.Cache(self.timers, self._arp_request, self._emit_ipv4, lifetime=arp_lifetime,
                             counters=self.counters)
        self.reasm = ipv4.Reassembler(self.timers, counters=self.counters)
        self.tcp = tcp.TcpLayer(self, self.timers, self._tcp_out, mss=mtu - 40)
        self.udp_ports: dict[int, Callable[[bytes, int, bytes], None]] = {}   # port -> (src_ip, sport, payload)
        self.echo_replies: list[tuple[float, bytes, int, int, int]] = []   # (t, src, id, seq, len)
        self._arp_sweep = self.timers.add(arp_lifetime, self._sweep_arp, "arp_expire")

    # -- bookkeeping ----------------------------------------------------------------------

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] += n

    def take_tx(self) -> list[Outgoing]:
        out, self.tx = self.tx, []
        return out

    def next_deadline(self) -> float | None:
        return self.timers.next_deadline()

    def tick(self, now: float) -> None:
        self.now = now
        try:
            self.timers.run(now)
        except Exception:           # noqa: BLE001 — a timer must not stop the loop either
            self._internal_error()

    def _internal_error(self) -> None:
        self.count("stack.internal_error")
        self.last_error = traceback.format_exc()

    # -- receive --------------------------------------------------------------------------

    def receive(self, frame, now: float, csum_ok: bool = False) -> None:
        """One frame from the wire. `csum_ok`: the driver says the transport checksum was
        never computed because the frame came from this machine's kernel (AF_PACKET's
        TP_STATUS_CSUMNOTREADY on a veth), so there is nothing to verify."""
        self.now = now
        try:
            self._receive(frame, now, csum_ok)
        except ParseError as exc:
            self.count(exc.counter)
        except Exception:           # noqa: BLE001
            self._internal_error()

    def _receive(self, frame, now: float, csum_ok: bool) -> None:
        eth = ether.parse(frame)
        if eth.dst != self.mac and eth.dst != ether.BROADCAST:
            self.count("ether.drop.not_for_us")
            return
        self.counters["ether.rx"] += 1          # count() inlined on the paths every frame takes
        if len(frame) > self.mtu + ether.HEADER:
            self.count("ether.rx_super_frame")      # a GSO frame from a local kernel (veth), not a wire frame
        if eth.ethertype == ether.TYPE_ARP:
            self._arp_input(eth, now)
        elif eth.ethertype == ether.TYPE_IPV4:
            self._ipv4_input(eth.payload, now, csum_ok)
        else:
            self.count("ether.drop.unknown_type")

    def _arp_input(self, eth, now: float) -> None:
        pkt = arp.parse(eth.payload)
        if pkt.spa == self.ip and pkt.sha != self.mac:
            self.count("arp.conflict")
            return
        for_us = pkt.tpa == self.ip
        if pkt.spa != b"\0\0\0\0" and (for_us or pkt.spa in self.arp.entries):
            self.arp.learn(pkt.spa, pkt.sha, now)          # RFC 826's merge: update, or add if for us
        if pkt.op == arp.REQUEST and for_us:
            self.count("arp.reply_sent")
            self.tx.append(ether.build(pkt.sha, self.mac, ether.TYPE_ARP,
                                       arp.build(arp.REPLY, self.mac, self.ip, pkt.sha, pkt.spa)))
        elif pkt.op == arp.REPLY and for_us:
            self.count("arp.reply_received")
        else:
            self.count("arp.not_for_us" if not for_us else "arp.other")

    def _ipv4_input(self, data, now: float, csum_ok: bool) -> None:
        pkt = ipv4.parse(data)
        if pkt.dst != self.ip and pkt.dst != self.broadcast and pkt.dst != b"\xff\xff\xff\xff":
            self.count("ipv4.drop.not_for_us")
            return
        if pkt.has_options:
            self.count("ipv4.options_skipped")
        counters = self.counters
        counters["ipv4.rx"] += 1
        payload = pkt.payload
        if pkt.fragment:
            self.count("ipv4.fragment")
            csum_ok = False
            payload = self.reasm.add(pkt, now)
            if payload is None:
                return
        if pkt.proto == ipv4.TCP:
            if pkt.dst != self.ip:
                self.count("tcp.drop.broadcast")
                return
            seg = tcp.parse(payload, pkt.src, pkt.dst, not csum_ok)
            counters["tcp.rx"] += 1
            self.tcp.input(seg, pkt.src, pkt.dst, now)
        elif pkt.proto == ipv4.UDP:
            self._udp_input(pkt, payload, data, csum_ok)
        elif pkt.proto == ipv4.ICMP:
            self._icmp_input(pkt, payload, now)
        else:
            self.count("ipv4.drop.unknown_protocol")

    def _udp_input(self, pkt, payload, raw_ip, csum_ok: bool) -> None:
        dgram = udp.parse(payload, pkt.src, pkt.dst, not csum_ok)
        handler = self.udp_ports.get(dgram.dport)
        if handler is None:
            self.count("udp.port_unreachable")
            if pkt.dst == self.ip and not pkt.fragment:
                self.send_ip(pkt.src, ipv4.ICMP, icmp.unreachable(icmp.PORT_UNREACH, raw_ip))
            return
        self.count("udp.rx")
        handler(pkt.src, dgram.sport, bytes(dgram.payload))

    def _icmp_input(self, pkt, payload, now: float) -> None:
        msg = icmp.parse(payload)
        if msg.type == icmp.ECHO_REQUEST:
            if pkt.dst != self.ip:
                self.count("icmp.drop.broadcast_echo")
                return
            self.count("icmp.echo_request")
            self.send_ip(pkt.src, ipv4.ICMP, icmp.echo_reply(msg))
        elif msg.type == icmp.ECHO_REPLY:
            self.count("icmp.echo_reply")
            ident, seq = int.from_bytes(msg.rest[:2], "big"), int.from_bytes(msg.rest[2:], "big")
            if len(self.echo_replies) < 100000:
                self.echo_replies.append((now, pkt.src, ident, seq, len(msg.body)))
        elif msg.type == icmp.DEST_UNREACH:
            self.count(f"icmp.unreachable.{msg.code}")
        else:
            self.count("icmp.other")

    # -- send -----------------------------------------------------------------------------

    def _next_id(self) -> int:
        self._ip_id = (self._ip_id + 1) & 0xFFFF
        return self._ip_id

    def _arp_request(self, ip: bytes) -> None:
        self.tx.append(ether.build(ether.BROADCAST, self.mac, ether.TYPE_ARP,
                                   arp.build(arp.REQUEST, self.mac, self.ip, b"\0" * 6, ip)))

    def gratuitous_arp(self) -> None:
        """Announce our address (a request for our own IP, RFC 5227 §3)."""
        self.count("arp.gratuitous")
        self.tx.append(ether.build(ether.BROADCAST, self.mac, ether.TYPE_ARP,
                                   arp.build(arp.REQUEST, self.mac, self.ip, b"\0" * 6, self.ip)))

    def _emit_ipv4(self, mac: bytes, packet) -> None:
        if type(packet) is tuple:                   # (virtio-net header, packet): for the driver's offload
            self.tx.append((packet[0], ether.build(mac, self.mac, ether.TYPE_IPV4, packet[1])))
        else:
            self.tx.append(ether.build(mac, self.mac, ether.TYPE_IPV4, packet))

    def _next_hop(self, dst: bytes) -> bytes | None:
        if int.from_bytes(dst, "big") & self._mask == self._net:
            return dst
        return self.gateway

    def send_ip(self, dst: bytes, proto: int, payload, df: bool = True) -> bool:
        hop = self._next_hop(dst)
        if hop is None:
            self.count("ipv4.drop.no_route")
            return False
        if dst == self.broadcast:
            self._emit_ipv4(ether.BROADCAST, ipv4.build(self.ip, dst, proto, payload, self._next_id(), df=False))
            return True
        if ipv4.HEADER + len(payload) <= self.mtu:
            self._ip_id = ident = (self._ip_id + 1) & 0xFFFF       # _next_id() inlined: once per packet
            self.arp.resolve(hop, ipv4.build(self.ip, dst, proto, payload, ident, df=df), self.now)
            self.counters["ipv4.tx"] += 1
            return True
        self.count("ipv4.fragmented_tx")
        packets = ipv4.fragment(self.ip, dst, proto, payload, self._next_id(), self.mtu)
        for p in packets:
            self.arp.resolve(hop, p, self.now)
        self.count("ipv4.tx", len(packets))
        return True

    def send_tcp_offload(self, dst: bytes, segment: bytes, header_len: int, mss: int) -> None:
        """A TCP segment with a partial checksum, maybe longer than the MTU: the driver's
        virtio-net header asks the kernel to checksum it and cut it into `mss` pieces."""
        hop = self._next_hop(dst)
        if hop is None:
            self.count("ipv4.drop.no_route")
            return
        gso = len(segment) - header_len > mss
        vnet = VNET_HDR.pack(VNET_NEEDS_CSUM, VNET_GSO_TCPV4 if gso else 0, ether.HEADER + ipv4.HEADER + header_len,
                             mss if gso else 0, ether.HEADER + ipv4.HEADER, 16)
        self.count("tcp.tso_tx" if gso else "tcp.csum_offload_tx")
        self.arp.resolve(hop, (vnet, ipv4.build(self.ip, dst, ipv4.TCP, segment, self._next_id())), self.now)
        self.count("ipv4.tx")

    def _tcp_out(self, dst: bytes, segment: bytes) -> None:
        self.send_ip(dst, ipv4.TCP, segment)

    def send_udp(self, dst: bytes, sport: int, dport: int, payload) -> bool:
        return self.send_ip(dst, ipv4.UDP, udp.build(self.ip, dst, sport, dport, payload), df=False)

    def ping(self, dst: bytes, ident: int, seq: int, payload: bytes = b"") -> bool:
        msg = icmp.build(icmp.ECHO_REQUEST, 0, ident.to_bytes(2, "big") + seq.to_bytes(2, "big"), payload)
        return self.send_ip(dst, ipv4.ICMP, msg, df=False)

    def _sweep_arp(self, now: float) -> None:
        self.arp.expire(now)
        self._arp_sweep = self.timers.add(now + self.arp.lifetime, self._sweep_arp, "arp_expire")
