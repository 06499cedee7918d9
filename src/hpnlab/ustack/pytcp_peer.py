"""PyTCP (pip `PyTCP`, the reference user-space stack) on a TAP device, run the way its
README documents (`TcpIpStack(interface=...)`, `start()`, its Berkeley-like sockets),
with console logging switched off in its config (logging every packet to the console
would measure the terminal, not the stack). One JSON line per result.

    python -m hpnlab.ustack.pytcp_peer sink TAP ADDR/LEN KERNEL_ADDR/LEN PORT
    python -m hpnlab.ustack.pytcp_peer source TAP ADDR/LEN KERNEL_ADDR/LEN IP:PORT BYTES
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

from .bulk import receive_all, send_all


def main(argv: list[str]) -> int:
    mode, tap, addr, kernel_addr = argv[:4]
    from pytcp import TcpIpStack, config
    from pytcp.lib import socket as psocket
    config.LOG_CHANEL = set()
    stack = TcpIpStack(interface=tap, ip4_address=addr)
    config.IP6_SUPPORT = False
    subprocess.run(["ip", "addr", "add", kernel_addr, "dev", tap], check=True)
    subprocess.run(["ip", "link", "set", tap, "up"], check=True)
    stack.start()
    print(json.dumps({"event": "ready", "version": getattr(__import__("pytcp"), "__version__", None)}), flush=True)
    extra: dict = {}
    try:
        if mode == "sink":
            ls = psocket.socket(psocket.AF_INET4, psocket.SOCK_STREAM)
            ls.bind((addr.split("/")[0], int(argv[4])))
            ls.listen()
            print(json.dumps({"event": "listening"}), flush=True)
            s, _ = ls.accept()
            spurious = 0

            def recv(_n: int) -> bytes:
                # PyTCP's recv() returns b"" (its "peer closed") also while the session is still
                # ESTABLISHED: when data arrives between its wait on the buffer's semaphore and
                # its look at the buffer, the semaphore is left raised over an empty buffer. On
                # emulated VMs, where its threads switch often, that cut every transfer short.
                # The end of the stream is b"" once the session has left ESTABLISHED.
                nonlocal spurious
                while True:
                    data = s.recv()
                    if data or _state(s) != "ESTABLISHED":
                        return data
                    spurious += 1
            t = receive_all(recv)
            s.close()
            extra["empty_reads_while_established"] = spurious
        else:
            ip, port = argv[4].rsplit(":", 1)
            nbytes = int(argv[5])
            s = psocket.socket(psocket.AF_INET4, psocket.SOCK_STREAM)
            time.sleep(1.0)                      # its ARP cache fills on the first packets
            s.connect((ip, int(port)))
            t = send_all(s.send, nbytes)
            s.close()
            # send() only queues: the transfer ends when the session has closed (the kernel
            # sink's own timing is the one the lab reports)
            end = time.monotonic() + float(argv[6] if len(argv) > 6 else 600)
            while _state(s) not in ("CLOSED", "TIME_WAIT") and time.monotonic() < end:
                time.sleep(0.05)
        print(json.dumps(t.result(mode, **extra)), flush=True)
    finally:
        stack.stop()
    return 0


def _state(sock) -> str:
    """A PyTCP socket's TCP state by name (ESTABLISHED, CLOSE_WAIT, ...)."""
    return str(sock.state).split(".")[-1]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
