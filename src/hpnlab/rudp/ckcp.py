"""skywind3000's C ikcp (bundled by PyPI `kcp`) behind the same sans-I/O face as `Arq`:
send / recv / input / update / pop_output, the clock passed in. The peer the labs and the
interop test measure hpnlab's ARQ against."""
from __future__ import annotations

from collections import Counter

from .arq import HEADER, MASK


class CKcp:
    def __init__(self, conv: int, mode: tuple[int, int, int, bool], mtu: int = 1400,
                 snd_wnd: int = 32, rcv_wnd: int = 128):
        try:
            from kcp.extension import KCP
        except ImportError as exc:
            raise RuntimeError(f"C ikcp is not importable ({exc}): pip install kcp") from None
        nodelay, interval, resend, nocwnd = mode
        if nodelay not in (0, 1):       # the binding passes nodelay as a bool
            raise ValueError(f"the kcp binding takes nodelay 0 or 1, not {nodelay}")
        self.conv = conv
        self._out: list[bytes] = []
        self.stats: Counter = Counter()
        self.kcp = KCP(conv, mtu, bool(nodelay), interval, resend, nocwnd, snd_wnd, rcv_wnd)
        self.kcp.include_outbound_handler(self._output)

    def _output(self, _kcp, data: bytes) -> None:
        self._out.append(data)
        self.stats["datagrams_out"] += 1
        self.stats["bytes_out"] += len(data)

    def send(self, data: bytes) -> None:
        self.kcp.enqueue(bytes(data))

    def recv(self) -> bytes | None:
        if not self.kcp.next_packet_available:
            return None
        return bytes(self.kcp.get_received())

    def input(self, datagram: bytes, now: int) -> bool:
        self.stats["datagrams_in"] += 1
        self.stats["bytes_in"] += len(datagram)
        if len(datagram) >= HEADER.size and HEADER.unpack_from(datagram)[0] != self.conv:
            self.stats["dropped_conv"] += 1
            return False
        try:
            self.kcp.receive(bytes(datagram))
        except Exception:           # the binding raises for what ikcp_input refuses
            self.stats["dropped"] += 1
            return False
        return True

    def update(self, now: int) -> None:
        self.kcp.update(now & MASK)

    def check(self, now: int) -> int:
        return 10

    @property
    def waiting(self) -> int:
        return self.kcp.get_outbound_packets()

    def pop_output(self) -> list[bytes]:
        out, self._out = self._out, []
        return out
