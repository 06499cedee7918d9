"""DPDK (hpnlab.dpdk): the stack drives a NIC from user space, without the kernel.

`ifname` says which device: a PCI address bound to uio_pci_generic/vfio-pci (a VM's
eth2 after provisioning: `--ifname 0000:00:07.0`), a DPDK virtual device
(`net_af_packet0,iface=eth2`, `net_tap0`), or a kernel interface name, which is taken
through an af_packet vdev without hugepages (netns hosts). EAL runs once per process,
so one process opens one DPDK driver.

A poll-mode driver has no file descriptor to sleep on: fileno() is None and the
stack's loop polls the NIC between looks at its other descriptors (busy polling,
as DPDK applications do).
"""
from __future__ import annotations

import re

from ... import dpdk
from . import random_mac

PCI = re.compile(r"^([0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")


# An af_packet vdev's socket is in a fanout group with PACKET_FANOUT_FLAG_DEFRAG: the
# kernel hands it IP fragments reassembled (a 4000-byte ping arrives as one 4042-byte
# frame), and the PMD copies each frame of its TPACKET ring into ONE mbuf. Its ring's
# frames (2 KiB by default) and the pool's mbufs must both hold the longest datagram
# expected, or the kernel cuts it to the ring's frame; 16 KiB takes any the lab sends.
VDEV_FRAME = 16384


def eal_for(ifname: str) -> list[str]:
    if PCI.match(ifname):
        return dpdk.eal_args(pci=[ifname], no_huge=False, memory_mb=64, extra=["--log-level=warning"])
    vdev = ifname if ifname.startswith("net_") else \
        f"net_af_packet0,iface={ifname},framesz={VDEV_FRAME},blocksz={VDEV_FRAME}"
    return dpdk.eal_args(vdevs=[vdev], memory_mb=256, extra=["--log-level=warning"])


def pool_for(ifname: str) -> dpdk.Pool:
    """The RX/TX mbufs: DPDK's 2 KiB ones for a NIC (frames of the LAN's MTU, in hugepages
    a guest has few of), mbufs of the ring's frames for an af_packet vdev."""
    if PCI.match(ifname) or (ifname.startswith("net_") and not ifname.startswith("net_af_packet")):
        return dpdk.Pool("ustack", 4095)
    # the PMD refuses a ring frame whose data (the frame less its 32-byte tpacket2_hdr) does
    # not fit in an mbuf
    return dpdk.Pool("ustack", 4095, frame_max=VDEV_FRAME)


class Dpdk:
    def __init__(self, ifname: str, mac: bytes | None = None, offload: bool = False):
        if offload:
            raise ValueError("driver dpdk: no checksum/segmentation offload (the stack does its own)")
        dpdk.init(eal_for(ifname))
        self.port = dpdk.Port(0, pool_for(ifname))
        self.name = f"{self.port.name} ({self.port.driver})"
        # the port is promiscuous, any MAC is ours; on a kernel NIC (af_packet) not the kernel's own
        self.mac = mac or (self.port.mac if PCI.match(ifname) else random_mac())
        self.mtu = self.port.mtu
        self.offload = False

    def fileno(self) -> None:
        return None

    def rx_burst(self, n: int = 64) -> list[tuple[bytes, bool]]:
        # the NIC verified nothing for us: the stack checks every checksum
        return [(f, False) for f in self.port.rx(n)]

    def tx_burst(self, frames: list) -> int:
        return self.port.tx([f if type(f) is bytes else bytes(f) for f in frames])

    def close(self) -> None:
        self.port.close()
