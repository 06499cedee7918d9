"""The interop suite's simultaneous close, read back: what a capture says of two FINs
(crossed, or one answering the other as on the VM run that failed), the kernel's TCP
state from /proc/net/tcp, and the TCP flags the FIN/SYN hold looks at in an NFQUEUE copy."""
from __future__ import annotations

import socket
import struct

from hpnlab.labs.pcap import ACK, FIN, Segment
from hpnlab.ustack.interop import fins_crossed, in_order
from hpnlab.ustack.peer import tcp_flags, tcp_state

STACK, LINUX, PORT = "10.77.5.101", "10.77.5.2", 40555


def seg(src: str, flags: int, seq: int, ack: int) -> Segment:
    dst, sport, dport = (LINUX, 43000, PORT) if src == STACK else (STACK, PORT, 43000)
    return Segment(0.0, "tcp", src, sport, dst, dport, flags, seq, ack)


def test_two_fins_that_crossed():
    # each FIN acknowledges only the other's data; each side then ACKs the other's FIN
    # from beyond its own (seq FIN + 1): both were in CLOSING
    close = [seg(STACK, FIN | ACK, 100, 500), seg(LINUX, FIN | ACK, 500, 100),
             seg(STACK, ACK, 101, 501), seg(LINUX, ACK, 501, 101)]
    got = fins_crossed(close, STACK, LINUX, PORT)
    assert got["crossed"] and got["stack_had_fin_first"]
    assert got["answered"] == {STACK: True, LINUX: True}


def test_the_vm_runs_close_did_not_cross():
    # the failed VM run: Linux ACKed the stack's FIN first (stack: FIN_WAIT_2), then sent
    # its own FIN acknowledging the stack's (Linux: CLOSE_WAIT -> LAST_ACK)
    close = [seg(STACK, FIN | ACK, 100, 500), seg(LINUX, ACK, 500, 101),
             seg(LINUX, FIN | ACK, 500, 101), seg(STACK, ACK, 101, 501)]
    got = fins_crossed(close, STACK, LINUX, PORT)
    assert not got["crossed"] and not got["stack_had_fin_first"]
    assert got["answered"] == {STACK: True, LINUX: False}


def test_a_missing_fin_is_said():
    got = fins_crossed([seg(STACK, FIN | ACK, 100, 500)], STACK, LINUX, PORT)
    assert not got["crossed"] and got["detail"] == f"no FIN from {LINUX}"


def test_sequence_numbers_wrap():
    close = [seg(STACK, FIN | ACK, 0xFFFFFFFF, 7), seg(LINUX, FIN | ACK, 7, 0xFFFFFFFF),
             seg(STACK, ACK, 0, 8), seg(LINUX, ACK, 8, 0)]
    got = fins_crossed(close, STACK, LINUX, PORT)
    assert got["crossed"] and all(got["answered"].values())


def test_states_in_order():
    assert in_order(["ESTABLISHED", "FIN_WAIT1", "CLOSING", "TIME_WAIT"], ("FIN_WAIT1", "CLOSING", "TIME_WAIT"))
    assert not in_order(["ESTABLISHED", "CLOSING", "FIN_WAIT1", "TIME_WAIT"], ("FIN_WAIT1", "CLOSING", "TIME_WAIT"))


PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:9E6B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 10 0
   1: 0205A80A:9E6B 65054D0A:A7F8 06 00000000:00000000 03:000016A1 00000000     0        0 0 3 0
   2: 0205A80A:9E6B 65054D0A:A7F9 0B 00000000:00000000 01:00000014 00000000     0        0 0 3 0
"""


def test_tcp_state_reads_the_connection_to_that_peer_not_the_listener_or_an_older_one():
    assert tcp_state(40555, ("10.77.5.101", 0xA7F9), PROC_NET_TCP) == "CLOSING"
    assert tcp_state(40555, ("10.77.5.101", 0xA7F8), PROC_NET_TCP) == "TIME_WAIT"
    assert tcp_state(40555, ("10.77.5.102", 0xA7F9), PROC_NET_TCP) is None


def test_tcp_flags_of_a_queued_copy():
    ip = struct.pack("!BBHHHBBH4s4s", 0x46, 0, 64, 0, 0, 64, socket.IPPROTO_TCP, 0,
                     socket.inet_aton(STACK), socket.inet_aton(LINUX)) + b"\0" * 4    # IHL 6: options
    tcp = struct.pack("!HHIIBBHHH", 43000, PORT, 1, 2, 5 << 4, FIN | ACK, 1000, 0, 0)
    assert tcp_flags(ip + tcp) == FIN | ACK
    assert tcp_flags((ip + tcp)[:30]) == 0                          # cut before the flags
    assert tcp_flags(ip[:9] + bytes([socket.IPPROTO_UDP]) + ip[10:] + tcp) == 0
