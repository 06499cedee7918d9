"""TAP (/dev/net/tun, IFF_TAP | IFF_NO_PI): the kernel sees a NIC, the stack reads and
writes whole Ethernet frames. The device lives as long as the file descriptor does."""
from __future__ import annotations

import fcntl
import os
import struct

from . import link_mtu, random_mac, send_frames

TUNSETIFF, TUNSETOFFLOAD = 0x400454CA, 0x400454D0
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
TUN_F_CSUM, TUN_F_TSO4 = 0x01, 0x02
VNET_LEN, VNET_NEEDS_CSUM, VNET_DATA_VALID = 10, 1, 2


class Tap:
    def __init__(self, ifname: str, mac: bytes | None = None, offload: bool = False):
        if len(ifname.encode()) > 15:
            raise ValueError(f"interface name {ifname!r} is longer than 15 bytes")
        self.name = ifname
        self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
            fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH22x", ifname.encode(), flags))
            if offload:
                # the kernel may hand us unchecksummed and unsegmented TCP (up to 64 KiB), and
                # takes the same from us: IFF_VNET_HDR, as a VM's virtio NIC
                fcntl.ioctl(self.fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4)
        except OSError:
            os.close(self.fd)
            raise
        self.offload = offload
        self.mac = mac or random_mac()
        self.mtu = link_mtu(ifname)

    def fileno(self) -> int:
        return self.fd

    def rx_burst(self, n: int = 64) -> list[tuple[bytes, bool]]:
        out = []
        read = os.read
        try:
            if self.offload:
                for _ in range(n):
                    raw = read(self.fd, 65536 + 1024)
                    out.append((raw[VNET_LEN:], bool(raw[0] & (VNET_NEEDS_CSUM | VNET_DATA_VALID))))
            else:
                for _ in range(n):
                    out.append((read(self.fd, 65536), False))
        except BlockingIOError:
            pass
        return out

    def tx_burst(self, frames: list) -> int:
        return send_frames(lambda f: os.write(self.fd, f), frames, self.offload)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
