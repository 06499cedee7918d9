"""A user-space delay line on NFQUEUE, for kernels without sch_netem.

An nftables rule hands each packet leaving a NIC to queue N; this process
holds the packet's verdict for the configured delay and then accepts it. The
packet itself never leaves the kernel (metadata-only copy), so nothing is
rewritten and checksum offload does not matter. Verdicts go out in batches
(NFQNL_MSG_VERDICT_BATCH accepts every id up to the one named), so the cost
per packet is one small netlink message in, a fraction of one out.

    python -m hpnlab.impair.delayq --queue 7 --delay-ms 10 [--jitter-ms 2]
"""
from __future__ import annotations

import argparse
import collections
import os
import random
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG, NFQNL_MSG_VERDICT_BATCH = 0, 1, 2, 3
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQA_PACKET_HDR, NFQA_VERDICT_HDR, NFQA_PAYLOAD = 1, 2, 10
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META, NFQNL_COPY_PACKET = 1, 2
NFQA_CFG_F_GSO = 4
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
NF_ACCEPT = 1
SO_RCVBUFFORCE = 33
NLMSG_HDR = struct.Struct("=IHHII")
NFGENMSG = struct.Struct("!BBH")   # family, version, res_id (big-endian)


def _attr(kind: int, payload: bytes) -> bytes:
    pad = (4 - len(payload) % 4) % 4
    return struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * pad


class Queue:
    """NFQUEUE `num`, bound. `copy_range` > 0: each packet's first that many bytes (from
    its IP header) come along with its id, for a holder that decides by what it sees."""

    def __init__(self, num: int, maxlen: int = 10000, copy_range: int = 0):
        self.num = num
        self.seq = 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:   # a big buffer so bursts do not overflow the socket (root may exceed rmem_max)
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind((0, 0))
        self._config(_attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, socket.AF_INET)))
        mode = (copy_range, NFQNL_COPY_PACKET) if copy_range else (0, NFQNL_COPY_META)
        self._config(_attr(NFQA_CFG_PARAMS, struct.pack("!IB", *mode)) +
                     _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", maxlen)) +
                     _attr(NFQA_CFG_FLAGS, struct.pack("!I", NFQA_CFG_F_GSO)) +
                     _attr(NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_GSO)))

    def _send(self, msg_type: int, payload: bytes, flags: int = NLM_F_REQUEST) -> None:
        self.seq += 1
        body = NFGENMSG.pack(socket.AF_UNSPEC, 0, self.num) + payload
        self.sock.send(NLMSG_HDR.pack(NLMSG_HDR.size + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg_type,
                                      flags, self.seq, 0) + body)

    def _config(self, attrs: bytes) -> None:
        self._send(NFQNL_MSG_CONFIG, attrs, NLM_F_REQUEST | NLM_F_ACK)
        data = self.sock.recv(65536)
        length, kind, _flags, _seq, _pid = NLMSG_HDR.unpack_from(data)
        if kind == NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", data, NLMSG_HDR.size)
            if err:
                raise OSError(-err, f"nfqueue {self.num} config: {os.strerror(-err)}")

    def packets(self, data: bytes):
        """Yield (packet id, the bytes copied of it: b"" in metadata mode) of each
        queued-packet message in a netlink read."""
        offset = 0
        while offset + NLMSG_HDR.size <= len(data):
            length, kind, _flags, _seq, _pid = NLMSG_HDR.unpack_from(data, offset)
            if length < NLMSG_HDR.size:
                break
            if kind & 0xff == NFQNL_MSG_PACKET and kind >> 8 == NFNL_SUBSYS_QUEUE:
                pos, end = offset + NLMSG_HDR.size + NFGENMSG.size, offset + length
                pid, payload = None, b""
                while pos + 4 <= end:
                    alen, atype = struct.unpack_from("=HH", data, pos)
                    if alen < 4:
                        break
                    if atype & 0x7fff == NFQA_PACKET_HDR:
                        pid = struct.unpack_from("!I", data, pos + 4)[0]
                    elif atype & 0x7fff == NFQA_PAYLOAD:
                        payload = data[pos + 4:pos + alen]
                    pos += (alen + 3) & ~3
                if pid is not None:
                    yield pid, payload
            offset += (length + 3) & ~3

    def accept_through(self, packet_id: int) -> None:
        self._send(NFQNL_MSG_VERDICT_BATCH, _attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id)))


def run(queue_num: int, delay_ms: float, jitter_ms: float = 0.0, ready_fd: int | None = None) -> None:
    queue = Queue(queue_num)
    held: collections.deque[tuple[float, int]] = collections.deque()
    delay, jitter = delay_ms / 1000.0, jitter_ms / 1000.0
    last_due = 0.0
    stop = False

    def _stop(*_):
        nonlocal stop
        stop = True
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if ready_fd is not None:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)
    poller = select.epoll()
    poller.register(queue.sock.fileno(), select.EPOLLIN)
    while not stop:
        now = time.monotonic()
        timeout = max(0.0, held[0][0] - now) if held else 1.0
        if poller.poll(timeout):
            try:
                data = queue.sock.recv(1 << 20)
            except OSError:       # ENOBUFS: messages lost, their packets are released by a later batch
                data = b""
            now = time.monotonic()
            for pid, _payload in queue.packets(data):
                due = now + delay + (random.uniform(-jitter, jitter) if jitter else 0.0)
                last_due = max(due, last_due)   # a delay line keeps order (unlike netem with jitter)
                held.append((last_due, pid))
        now = time.monotonic()
        release = None
        while held and held[0][0] <= now:
            release = held.popleft()[1]
        if release is not None:
            queue.accept_through(release)
    if held:   # on the way out, release what we hold rather than strand it
        queue.accept_through(held[-1][1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, required=True)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    try:
        run(args.queue, args.delay_ms, args.jitter_ms)
    except OSError as exc:
        print(f"delayq: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
