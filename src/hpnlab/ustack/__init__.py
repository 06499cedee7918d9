"""A user-space TCP/IP stack (course §2.4): Ethernet, ARP, IPv4, ICMP, UDP and TCP,
a BSD-like socket API and a user-space epoll, on a TAP or AF_PACKET driver.

Layers live in `proto/<layer>/`, each a parser (integrity check, then sanity check)
and a builder; the protocol core (`stack.Stack`) is sans-I/O: frames in, frames out,
time passed in. `loop.Loop` joins a driver to the core; `socket` and `epoll` sit on it.
"""
