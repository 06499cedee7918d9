"""AF_PACKET on an existing NIC: the stack takes the NIC's frames with its own MAC and
IP. The NIC goes promiscuous (a membership, released when the socket closes) so a real
NIC's filter passes frames for the stack's MAC; the kernel marks those PACKET_OTHERHOST
and drops them, so it never answers (no RST, no ICMP) for the stack's traffic.

Receiving is a PACKET_MMAP ring, no system call per frame, in one of two layouts:

- TPACKET_V2 (the default): fixed slots of 68 KiB (a GSO super-frame fits), each
  handed over at once — a wakeup per burst, no added latency;
- TPACKET_V3: variable-sized frames packed into blocks, a block handed over when full
  or when its timer (`block_timeout_ms`, in practice a few jiffies) runs out — few
  wakeups, but a lone frame waits for the timer (the lab report measures what that
  costs the ping flood and echo round trips).

Each frame's tp_status says TP_STATUS_CSUMNOTREADY when its checksum was left to an
offload that never ran (a veth from this machine's kernel). Sending is one send() per
frame.
"""
from __future__ import annotations

import mmap
import socket
import struct
import time

from . import link_mtu, random_mac, send_frames

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP, PACKET_MR_PROMISC = 1, 1
PACKET_RX_RING, PACKET_STATISTICS, PACKET_VERSION, PACKET_VNET_HDR, PACKET_IGNORE_OUTGOING = 5, 6, 10, 15, 23
TPACKET_V2, TPACKET_V3 = 1, 2
V2_FRAME, V2_FRAMES = 17 << 12, 512            # 34 MiB of 68 KiB slots: a 64 KiB GSO frame fits, and bursts (1000 SYNs)
HOLE_GRACE = 0.1                                # s a slot may stay unready behind a ready one (see _hole)
_V2_HDR = struct.Struct("<IIIHH")               # status, len, snaplen, mac, net
TP_STATUS_KERNEL, TP_STATUS_USER, TP_STATUS_CSUMNOTREADY = 0, 1, 1 << 3
BLOCK_SIZE, BLOCK_NR, FRAME_SIZE = 1 << 18, 64, 1 << 11
_BLOCK_HDR = struct.Struct("<III")          # block_status, num_pkts, offset_to_first_pkt (at +8)
_PKT_HDR = struct.Struct("<IIIIIIHH")       # next_offset, sec, nsec, snaplen, len, status, mac, net


class AfPacket:
    def __init__(self, ifname: str, mac: bytes | None = None, block_timeout_ms: int = 1, version: int = 2,
                 offload: bool = False):
        if version not in (2, 3):
            raise ValueError(f"TPACKET version {version}: 2 or 3")
        if offload and version == 3:
            raise ValueError("offload (PACKET_VNET_HDR) needs the TPACKET_V2 ring")
        self.version = version
        # every frame sent carries a virtio-net header, so the kernel can checksum and
        # segment TCP for the stack (TSO), as it does for a VM's virtio NIC
        self.offload = offload
        self.name = ifname
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            self.sock.bind((ifname, ETH_P_ALL))
            ifindex = socket.if_nametoindex(ifname)
            self.sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP,
                                 struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b""))
            self.sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)   # not our own sends
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            if offload:
                self.sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            if version == 3:
                self.sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
                self.sock.setsockopt(SOL_PACKET, PACKET_RX_RING, struct.pack(
                    "IIIIIII", BLOCK_SIZE, BLOCK_NR, FRAME_SIZE, BLOCK_SIZE * BLOCK_NR // FRAME_SIZE,
                    block_timeout_ms, 0, 0))
                size = BLOCK_SIZE * BLOCK_NR
            else:
                self.sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
                self.sock.setsockopt(SOL_PACKET, PACKET_RX_RING, struct.pack(
                    "IIII", V2_FRAME, V2_FRAMES, V2_FRAME, V2_FRAMES))
                size = V2_FRAME * V2_FRAMES
            self.ring = mmap.mmap(self.sock.fileno(), size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.block = 0
        self._hole_since: tuple[int, float] | None = None     # (slot, when first seen unready before a ready one)
        self.mac = mac or random_mac()
        self.mtu = link_mtu(ifname)
        self.counters = {"blocks": 0, "frames": 0, "csum_not_ready": 0}

    def fileno(self) -> int:
        return self.sock.fileno()

    def rx_burst(self, n: int = 64) -> list[tuple[bytes, bool]]:
        return self._rx_v3(n) if self.version == 3 else self._rx_v2(n)

    def _rx_v2(self, n: int) -> list[tuple[bytes, bool]]:
        out: list[tuple[bytes, bool]] = []
        ring = self.ring
        while len(out) < n:
            base = self.block * V2_FRAME
            status, _len, snaplen, mac_off, _net = _V2_HDR.unpack_from(ring, base)
            if not status & TP_STATUS_USER:
                if out or not self._hole():
                    break
                continue
            csum_ok = bool(status & TP_STATUS_CSUMNOTREADY)
            out.append((ring[base + mac_off:base + mac_off + snaplen], csum_ok))
            if csum_ok:
                self.counters["csum_not_ready"] += 1
            struct.pack_into("<I", ring, base, TP_STATUS_KERNEL)
            self.block = (self.block + 1) % V2_FRAMES
        self.counters["frames"] += len(out)
        return out

    def _hole(self) -> bool:
        """Whether to step over our slot: the kernel never handed it over, yet the next
        one is ready. The kernel takes a slot, copies into it and only then marks it
        ready, so for a moment a hole is normal; one that outlives HOLE_GRACE is a frame
        the kernel counted and never marked (seen on netns under a SYN flood with both
        cores busy: the stack then read nothing more until the kernel had gone round the
        ring to the hole, and a client's handshake stalled for a minute). Stepped over,
        the slot is read a lap later if it was only late, or never if it was lost."""
        nxt = (self.block + 1) % V2_FRAMES
        if not _V2_HDR.unpack_from(self.ring, nxt * V2_FRAME)[0] & TP_STATUS_USER:
            self._hole_since = None
            return False
        now = time.monotonic()
        if self._hole_since is None or self._hole_since[0] != self.block:
            self._hole_since = (self.block, now)
            return False
        if now - self._hole_since[1] < HOLE_GRACE:
            return False
        self._hole_since = None
        self.counters["ring_holes_skipped"] = self.counters.get("ring_holes_skipped", 0) + 1
        self.block = nxt
        return True

    def _rx_v3(self, n: int) -> list[tuple[bytes, bool]]:
        """Every frame of the blocks the kernel has handed over (a block at a time: `n`
        is a floor, not a cap, since a block must be returned whole)."""
        out: list[tuple[bytes, bool]] = []
        ring = self.ring
        while len(out) < n:
            base = self.block * BLOCK_SIZE
            status, num, first = _BLOCK_HDR.unpack_from(ring, base + 8)
            if not status & TP_STATUS_USER:
                break
            off = base + first
            for _ in range(num):
                nxt, _s, _ns, snaplen, _len, pstatus, mac_off, _net = _PKT_HDR.unpack_from(ring, off)
                start = off + mac_off
                csum_ok = bool(pstatus & TP_STATUS_CSUMNOTREADY)
                out.append((ring[start:start + snaplen], csum_ok))
                if csum_ok:
                    self.counters["csum_not_ready"] += 1
                off += nxt
            struct.pack_into("<I", ring, base + 8, TP_STATUS_KERNEL)
            self.block = (self.block + 1) % BLOCK_NR
            self.counters["blocks"] += 1
            self.counters["frames"] += num
        return out

    def tx_burst(self, frames: list) -> int:
        return send_frames(self.sock.send, frames, self.offload)

    def ring_stats(self) -> dict:
        """PACKET_STATISTICS since the last call: frames the kernel queued, and dropped
        because the ring was full."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
        packets, drops = struct.unpack_from("II", raw)
        self.counters["kernel_packets"] = self.counters.get("kernel_packets", 0) + packets
        self.counters["kernel_ring_drops"] = self.counters.get("kernel_ring_drops", 0) + drops
        return {"packets": packets, "drops": drops}

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self.ring_stats()
            try:
                self.ring.close()
            except (BufferError, ValueError):
                pass
            self.sock.close()
