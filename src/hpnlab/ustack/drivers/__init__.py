"""Drivers: how frames reach the stack. One small interface for all of them (TAP,
AF_PACKET here; DPDK in drivers/dpdk.py over hpnlab.dpdk's binding):

    rx_burst(n) -> [(frame, csum_ok), ...]   up to n frames, never blocking
    tx_burst(frames) -> int                 how many of `frames`, from the first, were taken;
                                            the loop offers the rest again later
    fileno() -> int | None                  poll() it for readability; None for a poll-mode
                                            driver (DPDK): the loop then never sleeps on it
    mac, mtu, name                          the stack's MAC and the link's MTU
    offload (optional, default False)       True: tx frames may be (virtio-net header, frame)
                                            tuples, TCP segments up to 64 KiB to checksum and cut
    close()

A frame is bytes-like (bytes, or a memoryview the driver keeps valid until the next
rx_burst). `csum_ok` is True when the frame's transport checksum need not be checked
(the kernel says it was never filled in — a frame from this machine's own kernel across
a veth — or a NIC verified it), so the stack does not check it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol


class Driver(Protocol):
    name: str
    mac: bytes
    mtu: int

    def rx_burst(self, n: int = 64) -> list[tuple[bytes, bool]]: ...
    def tx_burst(self, frames: list) -> int: ...
    def fileno(self) -> int | None: ...
    def close(self) -> None: ...


def random_mac() -> bytes:
    """A locally administered unicast MAC (02:xx:...)."""
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFC) | 0x02
    return bytes(b)


def link_mtu(ifname: str) -> int:
    return int(Path(f"/sys/class/net/{ifname}/mtu").read_text())


DRIVERS = ("afpacket", "afpacket-v3", "tap", "dpdk")
ZERO_VNET = bytes(10)                       # a virtio-net header asking for nothing


def send_frames(write, frames: list, vnet: bool) -> int:
    """Write frames one by one; a frame is bytes, or (virtio-net header, bytes) for the
    offloads. With `vnet` every frame needs a header. A full queue (EAGAIN) stops the
    burst (the caller keeps the rest); other errors drop the frame, as a wire would."""
    sent = 0
    for f in frames:
        if type(f) is tuple:
            f = f[0] + f[1]
        elif vnet:
            f = ZERO_VNET + f
        try:
            write(f)
        except BlockingIOError:
            break
        except OSError:             # ENOBUFS, ENETDOWN, EIO (link down)
            pass
        sent += 1
    return sent


def open_driver(kind: str, ifname: str, mac: bytes | None = None, offload: bool = False):
    """`offload`: TCP checksum and segmentation left to the kernel through a virtio-net
    header (afpacket on the V2 ring, tap)."""
    if kind in ("afpacket", "afpacket-v3"):
        from .afpacket import AfPacket
        return AfPacket(ifname, mac, version=3 if kind == "afpacket-v3" else 2, offload=offload)
    if kind == "tap":
        from .tap import Tap
        return Tap(ifname, mac, offload=offload)
    if kind == "dpdk":                 # hpnlab.dpdk: ifname is a PCI address, a vdev or a kernel NIC
        from .dpdk import Dpdk
        return Dpdk(ifname, mac, offload=offload)
    raise ValueError(f"driver {kind!r}: one of {', '.join(DRIVERS)}")
