"""hpnlab.dpdk - a small cffi binding to Debian's DPDK 22.11 (course: 用户态协议栈 / DPDK).

    eal = init(eal_args(vdevs=["net_af_packet0,iface=eth1"]))   # once per process
    pool = Pool("rx", 8191)
    port = Port(0, pool, rxq=1, txq=1)
    port.tx([frame]); port.rx(32); port.link(); port.xstats()

DPDK lives for the whole process: rte_eal_init runs once, and what it takes
(hugepages, the NIC) is given back when the process exits. So anything that
needs a fresh EAL (a test, each run of the generator) runs in its own process.

Errors a user can make - EAL arguments EAL rejects, no hugepages without
--no-huge, a PCI NIC still owned by its kernel driver, no port at all - are
found before or right after rte_eal_init and raised as DpdkError with the fix
in the hint, never left to a crash.

The compiled part (_hpnlab_dpdk_v5, built from _build.py) is made by `make
setup`; if it is missing the first import builds it, or says what is missing.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from ..cbuild import BuildError, load_or_build
from ..errors import HpnlabError

# Kernel drivers through which DPDK can drive a PCI NIC.
DPDK_PCI_DRIVERS = ("uio_pci_generic", "vfio-pci", "igb_uio")


class DpdkError(HpnlabError, RuntimeError):
    """DPDK cannot do what was asked; the message says why, the hint how to fix it."""


def _load():
    from . import _build
    try:
        mod = load_or_build(__name__, _build.MODULE, _build.build)
    except BuildError as exc:
        raise DpdkError(f"the DPDK binding is not built and cannot be built: {exc}",
                        hint="`make setup` installs libdpdk-dev and builds it") from None
    return mod.ffi, mod.lib


def binding():
    """(ffi, lib) of the compiled shim."""
    global _binding
    if _binding is None:
        _binding = _load()
    return _binding


_binding = None
_eal_args: list[str] | None = None


def _strerror(code: int) -> str:
    ffi, lib = binding()
    return ffi.string(lib.hp_strerror(code)).decode(errors="replace")


# -- EAL ------------------------------------------------------------------------------------

def eal_args(vdevs=(), pci=(), no_huge: bool = True, memory_mb: int | None = None,
             lcores: str | None = None, extra=()) -> list[str]:
    """The EAL arguments a lab needs: virtual devices and/or allowed PCI NICs, no
    hugepages (tests, netns hosts) or hugepages without leftover files."""
    args = ["--no-telemetry"]
    if lcores is None:
        lcores = str(min(os.sched_getaffinity(0)))
    args += ["-l", lcores]
    if no_huge:
        # --in-memory is refused with --no-huge; no shared config leaves no files either
        args += ["--no-huge", "--no-shconf", "-m", str(memory_mb or 256)]
    else:
        args += ["--in-memory"] + (["-m", str(memory_mb)] if memory_mb else [])
    if not pci:
        args.append("--no-pci")
    args += [f"--allow={p}" for p in pci]
    args += [f"--vdev={v}" for v in vdevs]
    return args + list(extra)


def _arg_values(args: list[str], *names: str) -> list[str]:
    """Values of options given as `--name=v`, `--name v` or `-a v`."""
    out = []
    for i, a in enumerate(args):
        for n in names:
            if a == n and i + 1 < len(args):
                out.append(args[i + 1])
            elif a.startswith(n + "=") and n.startswith("--"):
                out.append(a.split("=", 1)[1])
    return out


def _pci_driver(addr: str) -> str | None:
    link = Path("/sys/bus/pci/devices") / addr / "driver"
    return os.path.basename(os.readlink(link)) if link.is_symlink() else None


def _pci_ifnames(addr: str) -> list[str]:
    dev = Path("/sys/bus/pci/devices") / addr
    return sorted(p.name for p in [*dev.glob("net/*"), *dev.glob("virtio*/net/*")])


def hugepages_reserved(meminfo: str) -> int:
    """HugePages_Total of a /proc/meminfo text (pages of the default size)."""
    for line in meminfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "HugePages_Total":
            return int(value.split()[0])
    return 0


def check_eal_args(args: list[str], meminfo: str | None = None) -> None:
    """What EAL would fail on obscurely, said plainly before it runs."""
    if "--no-huge" not in args:
        if hugepages_reserved(meminfo if meminfo is not None else Path("/proc/meminfo").read_text()) == 0:
            raise DpdkError("no hugepages are reserved on this machine, and the EAL arguments "
                            "do not say --no-huge",
                            hint="add --no-huge (virtual devices, tests), or reserve hugepages: "
                                 "`make lab-provision` (hugepages role) or "
                                 "`echo 256 > /proc/sys/vm/nr_hugepages`")
    for addr in _arg_values(args, "-a", "--allow", "--pci-whitelist"):
        addr = addr.split(",", 1)[0]
        if not (Path("/sys/bus/pci/devices") / addr).exists():
            full = f"0000:{addr}"
            if (Path("/sys/bus/pci/devices") / full).exists():
                addr = full
            else:
                raise DpdkError(f"EAL argument --allow={addr}: no PCI device {addr} on this machine",
                                hint="`lspci -D` lists them; `hpnlab status` shows the lab's DPDK NIC")
        driver = _pci_driver(addr)
        if driver not in DPDK_PCI_DRIVERS:
            names = ", ".join(_pci_ifnames(addr)) or "no interface"
            raise DpdkError(f"PCI NIC {addr} ({names}) is owned by the kernel driver "
                            f"{driver or '(none)'}, not by a DPDK driver "
                            f"({', '.join(DPDK_PCI_DRIVERS)})",
                            hint=f"`make lab-provision` binds the lab's data NIC, or "
                                 f"`dpdk-devbind.py -b uio_pci_generic {addr}` (the NIC leaves the kernel)")


def init(args: list[str]) -> int:
    """rte_eal_init(args) once per process; the number of ports it found. A second call
    with the same arguments is a no-op; with other arguments it is an error."""
    global _eal_args
    args = [str(a) for a in args]
    if _eal_args is not None:
        if args != _eal_args:
            raise DpdkError("DPDK's EAL is initialised once per process; it already runs with "
                            + " ".join(_eal_args), hint="run the other configuration in its own process")
        return port_count()
    check_eal_args(args)
    ffi, lib = binding()
    argv_bytes = [ffi.new("char[]", a.encode()) for a in ["hpnlab", *args]]
    argv = ffi.new("char *[]", argv_bytes)
    ret = lib.hp_eal_init(len(argv_bytes), argv)
    if ret < 0:
        code = -ret
        hint = {
            errno.EINVAL: "an EAL argument is wrong: EAL printed which above; `dpdk-testpmd --help` lists them",
            errno.EACCES: "EAL needs root (or the capabilities for hugepages and /dev/uio*); try as root",
            errno.ENOMEM: "not enough memory: fewer mbufs, a smaller -m, or more hugepages",
            errno.EALREADY: "EAL already ran in this process",
            errno.ENOTSUP: "this machine lacks what EAL needs (hugetlbfs mounted? IOMMU for vfio?)",
        }.get(code, "EAL printed the reason above")
        raise DpdkError(f"rte_eal_init failed: {_strerror(code)} (errno {code}); EAL arguments: "
                        + " ".join(args), hint=hint)
    _eal_args = args
    n = port_count()
    if n == 0:
        raise DpdkError("EAL started but found no port in: " + " ".join(args),
                        hint="a --vdev=net_af_packet0,iface=IF needs IF to exist here; a PCI NIC must "
                             "be bound to uio_pci_generic/vfio-pci (`make lab-provision`)")
    return n


def port_count() -> int:
    return int(binding()[1].hp_port_count())


def tsc_hz() -> int:
    return int(binding()[1].hp_tsc_hz())


def tsc() -> int:
    return int(binding()[1].hp_tsc())


# -- mempool ---------------------------------------------------------------------------------

class Pool:
    """A pktmbuf mempool for RX queues and the generator; each mbuf holds a frame of up to
    `frame_max` bytes (2 KiB by default, DPDK's; a device that hands over longer frames in
    one mbuf, as the af_packet vdev does, needs a pool that fits them)."""

    def __init__(self, name: str, n: int = 8191, cache: int = 256, frame_max: int | None = None):
        ffi, lib = self.ffi, self.lib = binding()
        self.name = name
        room = lib.HP_DEFAULT_DATA_ROOM if frame_max is None else lib.HP_HEADROOM + frame_max
        self.frame_max = room - lib.HP_HEADROOM
        self.ptr = lib.hp_pool_create(name.encode(), n, cache, room)
        if self.ptr == ffi.NULL:
            code = lib.hp_errno()
            raise DpdkError(f"mempool {name!r} of {n} mbufs of {self.frame_max} bytes: {_strerror(code)}",
                            hint="fewer mbufs, or more memory (EAL -m, hugepages)"
                            if code == errno.ENOMEM else "EAL must run first (hpnlab.dpdk.init)")

    def available(self) -> int:
        return int(self.lib.hp_pool_avail(self.ptr))


# -- ports -------------------------------------------------------------------------------------

@dataclass
class Link:
    up: bool
    speed_mbps: int          # 0: the device does not say
    full_duplex: bool


class Port:
    """A started port with `rxq` RX and `txq` TX queues (RSS over them when asked and offered)."""

    def __init__(self, port_id: int, pool: Pool, rxq: int = 1, txq: int = 1,
                 rxd: int = 1024, txd: int = 1024, rss: bool = False):
        ffi, lib = self.ffi, self.lib = binding()
        if not lib.hp_port_valid(port_id):
            raise DpdkError(f"port {port_id}: no such port ({port_count()} found)")
        self.id = port_id
        self.pool = pool
        name = ffi.new("char[]", 64)
        lib.hp_port_name(port_id, name, 64)
        self.name = ffi.string(name).decode()
        info = ffi.new("struct hp_port_info *")
        self._check(lib.hp_port_info(port_id, info), "info")
        self.driver = ffi.string(info.driver).decode()
        self.mac = bytes(info.mac)
        self.mtu = int(info.mtu)
        self.max_queues = (int(info.max_rx_queues), int(info.max_tx_queues))
        self.rss_offloads = int(info.rss_offloads)
        if rxq > self.max_queues[0] or txq > self.max_queues[1]:
            raise DpdkError(f"port {port_id} ({self.name}, {self.driver}): {rxq} RX / {txq} TX queues asked, "
                            f"it has at most {self.max_queues[0]} / {self.max_queues[1]}")
        self.rxq, self.txq = rxq, txq
        self.rss = bool(rss and rxq > 1 and self.rss_offloads)
        self._check(lib.hp_port_start(port_id, rxq, txq, rxd, txd, pool.ptr, int(rss)), "configure/start")
        self.frame_max = pool.frame_max           # what rx() copies of a frame at most
        self._rx_buf = ffi.new("uint8_t[]", 64 * self.frame_max)
        self._rx_lens = ffi.new("unsigned[]", 64)
        self._rx_mv = memoryview(ffi.buffer(self._rx_buf))
        self.closed = False

    def _check(self, ret: int, what: str) -> None:
        if ret < 0:
            raise DpdkError(f"port {self.id}: {what}: {_strerror(-ret)} (errno {-ret})")

    def link(self) -> Link:
        out = self.ffi.new("struct hp_link *")
        self._check(self.lib.hp_link(self.id, out), "link status")
        return Link(bool(out.up), int(out.speed_mbps), bool(out.full_duplex))

    def stats(self) -> dict[str, int]:
        out = self.ffi.new("struct hp_stats *")
        self._check(self.lib.hp_stats(self.id, out), "stats")
        return {f: int(getattr(out, f)) for f in
                ("ipackets", "opackets", "ibytes", "obytes", "imissed", "ierrors", "oerrors", "rx_nombuf")}

    def reset_stats(self) -> None:
        self.lib.hp_stats_reset(self.id)

    def xstats(self) -> dict[str, int]:
        """The driver's extended counters (per-queue ones included), by name."""
        ffi, lib = self.ffi, self.lib
        cap = 256
        while True:
            names = ffi.new("char[]", cap * lib.HP_XSTAT_NAME)
            values = ffi.new("uint64_t[]", cap)
            n = lib.hp_xstats(self.id, names, values, cap)
            self._check(n, "xstats")
            if n <= cap:
                break
            cap = n
        raw = ffi.buffer(names)
        size = lib.HP_XSTAT_NAME
        return {bytes(raw[i * size:(i + 1) * size]).split(b"\0", 1)[0].decode(): int(values[i])
                for i in range(n)}

    def rx(self, n: int = 32, queue: int = 0) -> list[bytes]:
        """Up to n frames (copies of at most the pool's frame_max bytes, a chain of mbufs
        included); never blocks."""
        each = self.frame_max
        got = self.lib.hp_rx_copy(self.id, queue, self._rx_buf, each, self._rx_lens, min(n, 64))
        mv = self._rx_mv
        return [bytes(mv[i * each:i * each + min(self._rx_lens[i], each)]) for i in range(got)]

    def tx(self, frames: list[bytes], queue: int = 0) -> int:
        """Send frames (copied into mbufs); how many the queue took (the rest were not sent)."""
        sent = 0
        for i in range(0, len(frames), 64):
            chunk = frames[i:i + 64]
            lens = self.ffi.new("unsigned[]", [len(f) for f in chunk])
            ret = self.lib.hp_tx_copy(self.id, queue, self.pool.ptr, b"".join(chunk), lens, len(chunk))
            if ret == -errno.ENOBUFS:
                break                       # the pool is empty: the rest waits, as a full ring
            self._check(ret, "tx")
            sent += ret
            if ret < len(chunk):
                break
        return sent

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.lib.hp_port_stop(self.id)
