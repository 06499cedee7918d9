"""TAP (/dev/net/tun, IFF_TAP | IFF_NO_PI): the kernel sees a NIC, the stack reads and
writes whole Ethernet frames. The device lives as long as the file descriptor does."""
from __future__ import annotations

import fcntl
import os
import struct

from . import link_mtu, random_mac

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000


class Tap:
    def __init__(self, ifname: str, mac: bytes | None = None):
        if len(ifname.encode()) > 15:
            raise ValueError(f"interface name {ifname!r} is longer than 15 bytes")
        self.name = ifname
        self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH22x", ifname.encode(), IFF_TAP | IFF_NO_PI))
        except OSError:
            os.close(self.fd)
            raise
        self.mac = mac or random_mac()
        self.mtu = link_mtu(ifname)

    def fileno(self) -> int:
        return self.fd

    def rx_burst(self, n: int = 64) -> list[tuple[bytes, bool]]:
        out = []
        read = os.read
        try:
            for _ in range(n):
                out.append((read(self.fd, 65536), False))
        except BlockingIOError:
            pass
        return out

    def tx_burst(self, frames: list[bytes]) -> int:
        sent = 0
        for f in frames:
            try:
                os.write(self.fd, f)
            except BlockingIOError:
                break
            except OSError:           # the link is down (EIO): what a NIC does is drop
                pass
            sent += 1
        return sent

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
