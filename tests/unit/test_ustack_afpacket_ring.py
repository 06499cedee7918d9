"""The AF_PACKET driver's TPACKET_V2 reader on a ring laid out as the kernel lays it out
(tpacket2_hdr, then the frame at tp_mac): frames are taken in slot order, and a slot the
kernel counted but never marked ready stops the reader only for HOLE_GRACE — not until
the kernel has gone round the whole ring (the SYN-flood stall: a client's handshake
stuck for a minute behind one such slot)."""
from __future__ import annotations

import time

import pytest

from hpnlab.ustack.drivers.afpacket import _V2_HDR, HOLE_GRACE, TP_STATUS_USER, V2_FRAME, V2_FRAMES, AfPacket

MAC_OFF = 66


@pytest.fixture
def ring_driver():
    """An AfPacket reading a bytearray in place of the kernel's mmap (the socket is not
    needed to read the ring)."""
    drv = AfPacket.__new__(AfPacket)
    drv.version, drv.block, drv._hole_since = 2, 0, None
    drv.ring = bytearray(V2_FRAME * V2_FRAMES)
    drv.counters = {"blocks": 0, "frames": 0, "csum_not_ready": 0}
    return drv


def put(drv, slot: int, frame: bytes) -> None:
    """What tpacket_rcv does: the frame, then the header with TP_STATUS_USER last."""
    base = slot * V2_FRAME
    drv.ring[base + MAC_OFF:base + MAC_OFF + len(frame)] = frame
    _V2_HDR.pack_into(drv.ring, base, TP_STATUS_USER, len(frame), len(frame), MAC_OFF, MAC_OFF + 14)


def test_frames_in_slot_order_and_slots_handed_back(ring_driver):
    for i in range(3):
        put(ring_driver, i, b"frame %d" % i)
    got = ring_driver.rx_burst(64)
    assert [bytes(f) for f, _ in got] == [b"frame 0", b"frame 1", b"frame 2"]
    assert ring_driver.block == 3
    assert all(_V2_HDR.unpack_from(ring_driver.ring, i * V2_FRAME)[0] == 0 for i in range(3))
    assert ring_driver.rx_burst(64) == []


def test_a_slot_still_being_filled_is_waited_for(ring_driver):
    """A hole shorter than HOLE_GRACE (the kernel copying on another CPU) keeps the order."""
    put(ring_driver, 1, b"second")
    assert ring_driver.rx_burst(64) == []
    put(ring_driver, 0, b"first")
    assert [bytes(f) for f, _ in ring_driver.rx_burst(64)] == [b"first", b"second"]
    assert "ring_holes_skipped" not in ring_driver.counters


def test_a_slot_never_handed_over_is_stepped_over(ring_driver):
    for i in range(1, 200):                    # slot 0 counted by the kernel, never marked ready
        put(ring_driver, i, b"frame %d" % i)
    assert ring_driver.rx_burst(256) == []
    time.sleep(HOLE_GRACE * 1.2)
    got = ring_driver.rx_burst(256)
    assert len(got) == 199 and bytes(got[0][0]) == b"frame 1"
    assert ring_driver.counters["ring_holes_skipped"] == 1
    # the late frame, if the kernel ever marks it, is read a lap later
    put(ring_driver, 0, b"late")
    for i in range(200, V2_FRAMES):
        put(ring_driver, i, b"frame %d" % i)
    got = ring_driver.rx_burst(V2_FRAMES)
    assert bytes(got[-1][0]) == b"late" and ring_driver.block == 1


def test_an_empty_ring_is_no_hole(ring_driver):
    for _ in range(3):
        assert ring_driver.rx_burst(64) == []
        time.sleep(HOLE_GRACE / 2)
    assert ring_driver.block == 0 and "ring_holes_skipped" not in ring_driver.counters

