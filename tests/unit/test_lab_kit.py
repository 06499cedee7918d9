"""The labs' pure helpers: pcap reading, handshake classification, trace parsing, tables."""
from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from hpnlab.labs import pcap
from hpnlab.labs._kit import StateTrace, parse_trace, state_paths
from hpnlab.labs.pcap import ACK, RST, SYN, Segment
from hpnlab.report import md_table

A, B = "10.0.0.1", "10.0.0.2"


def seg(src, flags, seq, ack=0, ts=0.0):
    dst = B if src == A else A
    return Segment(ts, "tcp", src, 5000, dst, 5000, flags, seq, ack)


def test_simultaneous_open_is_recognised_by_sequence_numbers():
    segs = [seg(A, SYN, 100), seg(B, SYN, 900), seg(A, SYN | ACK, 100, 901), seg(B, SYN | ACK, 900, 101),
            seg(A, ACK, 101, 901), seg(B, ACK, 901, 101)]
    assert pcap.handshake_kind(segs) == "simultaneous"


def test_one_sided_and_refused_attempts():
    refused = [seg(A, SYN, 1), seg(B, RST | ACK, 0, 2)]
    one_sided = [seg(A, SYN, 100), seg(B, SYN, 900), seg(A, SYN | ACK, 100, 901), seg(B, ACK, 901, 101)]
    assert pcap.handshake_kind(refused + one_sided) == "syn-syn-ack"
    listener = [seg(A, SYN, 100), seg(B, SYN | ACK, 555, 101), seg(A, ACK, 101, 556)]
    assert pcap.handshake_kind(listener) == "three-way"
    assert pcap.handshake_kind(refused) == "failed"
    assert pcap.opening(refused + one_sided)[0].seq == 100


def _frame(src, dst, sport, dport, flags, seq, ack, payload=b""):
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0,
                     bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))))
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp


def test_read_pcap_ethernet_tcp(tmp_path):
    frames = [_frame(A, B, 1, 2, SYN, 7, 0), _frame(B, A, 2, 1, SYN | ACK, 9, 8), _frame(A, B, 1, 2, ACK, 8, 10, b"hi")]
    data = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for i, f in enumerate(frames):
        data += struct.pack("<IIII", 100, i, len(f), len(f)) + f
    path = tmp_path / "x.pcap"
    path.write_bytes(data)
    segs = pcap.read_pcap(path)
    assert [s.flagstr for s in segs] == ["SYN", "SYN-ACK", "ACK"]
    assert segs[2].length == 2 and segs[1].src == B and segs[0].ts == 100.0
    assert len(pcap.connections(segs)) == 1


def test_parse_trace_and_state_paths():
    text = ("python3-1 [001] ..s1. 12.000001: inet_sock_set_state: family=AF_INET protocol=IPPROTO_TCP "
            "sport=5000 dport=5000 saddr=10.0.0.1 daddr=10.0.0.2 saddrv6=::ffff:10.0.0.1 daddrv6=::ffff:10.0.0.2 "
            "oldstate=TCP_SYN_SENT newstate=TCP_SYN_RECV\n"
            "python3-1 [001] ..s1. 12.000002: inet_sock_set_state: family=AF_INET protocol=IPPROTO_TCP "
            "sport=5000 dport=5000 saddr=10.0.0.1 daddr=10.0.0.2 saddrv6=::ffff:10.0.0.1 daddrv6=::ffff:10.0.0.2 "
            "oldstate=TCP_SYN_RECV newstate=TCP_ESTABLISHED\n")
    events = parse_trace(text)
    assert [(e.old, e.new) for e in events] == [("SYN_SENT", "SYN_RECV"), ("SYN_RECV", "ESTABLISHED")]
    assert state_paths(events) == {(A, 5000, B, 5000): ["SYN_SENT", "SYN_RECV", "ESTABLISHED"]}


def test_md_table_aligns_numbers_right():
    text = md_table(["n", "name"], [[1, "a|b"], [2.5, "c"]])
    assert text.splitlines()[1] == "|---:|:---|"
    assert "a\\|b" in text


def test_lab_agents_import_with_the_standard_library_alone():
    """The agents run on VMs and real machines, where provisioning installs hpnlab's package
    without its dependencies: importing a lab module must not pull in rich or matplotlib
    (the box carries python3-yaml for the topology code, nothing else)."""
    code = ("import sys\n"
            "for name in ('rich', 'matplotlib', 'fabric', 'pyroute2'):\n"
            "    sys.modules[name] = None\n"
            "import hpnlab.labs.p2p, hpnlab.labs.backlog, hpnlab.labs.close, hpnlab.labs.epoll, hpnlab.labs.nat\n"
            "import hpnlab.impair.delayq\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_labcode_pack_zips_the_package_once_per_fingerprint(tmp_path):
    """What the labcode role copies to VMs: the package as it sits in site-packages, no
    bytecode or built extension, rebuilt only when a file of the package changes."""
    import zipfile

    from hpnlab import labcode
    first = labcode.pack(tmp_path)
    names = zipfile.ZipFile(first["zip"]).namelist()
    assert "hpnlab/__init__.py" in names and "hpnlab/labs/p2p.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".so"))]
    again = labcode.pack(tmp_path)
    assert again == first and sorted(p.name for p in tmp_path.iterdir()) == [Path(first["zip"]).name]


def test_a_ctrl_c_while_a_state_trace_starts_leaves_no_tracefs_instance(monkeypatch):
    if not StateTrace.available():
        pytest.skip("no writable tracefs with sock:inet_sock_set_state here")
    write_text = Path.write_text

    def interrupted(path, text, *args, **kwargs):     # Ctrl-C just as the event is enabled
        n = write_text(path, text, *args, **kwargs)
        if path.name == "enable" and text == "1":
            os.kill(os.getpid(), signal.SIGINT)
        return n
    monkeypatch.setattr(Path, "write_text", interrupted)
    trace = StateTrace((40000, 40001))
    with pytest.raises(KeyboardInterrupt):
        with trace:
            pytest.fail("the block must not run")
    assert not trace.dir.exists()
