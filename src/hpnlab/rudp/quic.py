"""QUIC (aioquic, RFC 9000) behind the same sans-I/O face as `Arq` and `CKcp`: whole messages
in and out over one bidirectional stream (each framed by a 4-byte length), datagrams in and
out, the clock passed in (milliseconds, as the others). The rudp lab measures it beside KCP
and TCP; aioquic is itself sans-I/O, so this is framing and bookkeeping only.

    client = Quic(client=True); client.connect(peer_addr, now_ms)
    server = Quic(client=False)        # takes its connection from the first datagram
"""
from __future__ import annotations

import datetime
import struct
from collections import Counter
from typing import Any

from .arq import MASK

FRAME = struct.Struct("!I")
ALPN = "hpnlab-rudp"
STREAM = 0                              # the client's first bidirectional stream


def _self_signed() -> tuple[object, object]:
    """A throwaway certificate for the server (the client does not verify it: the lab
    measures transport, not PKI)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hpnlab-rudp")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    return cert, key


class Quic:
    def __init__(self, client: bool, max_datagram_size: int = 1400):
        try:
            from aioquic.quic.configuration import QuicConfiguration
        except ImportError as exc:
            raise RuntimeError(f"aioquic is not importable ({exc}): pip install aioquic") from None
        import ssl
        self.config = QuicConfiguration(is_client=client, alpn_protocols=[ALPN],
                                        max_datagram_size=max_datagram_size, idle_timeout=30.0)
        if client:
            self.config.verify_mode = ssl.CERT_NONE
        else:
            self.config.certificate, self.config.private_key = _self_signed()
        self.client = client
        self.conn: Any = None            # aioquic.quic.connection.QuicConnection, imported lazily
        self.peer: tuple[str, int] = ("0.0.0.0", 0)
        self.stats: Counter = Counter()
        self._rx = bytearray()
        self._out: list[bytes] = []
        self._now = 0.0

    def connect(self, peer: tuple[str, int], now: int) -> None:
        from aioquic.quic.connection import QuicConnection
        self.peer, self._now = peer, (now & MASK) / 1000
        self.conn = QuicConnection(configuration=self.config)
        self.conn.connect(peer, now=self._now)

    # -- the user's side ----------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self.conn is None:
            raise RuntimeError("no QUIC connection yet (a client connects first; a server waits for one)")
        self.conn.send_stream_data(STREAM, FRAME.pack(len(data)) + bytes(data))

    def recv(self) -> bytes | None:
        self._events()
        if len(self._rx) < FRAME.size:
            return None
        (n,) = FRAME.unpack_from(self._rx)
        if len(self._rx) < FRAME.size + n:
            return None
        msg = bytes(self._rx[FRAME.size:FRAME.size + n])
        del self._rx[:FRAME.size + n]
        return msg

    @property
    def closed(self) -> bool:
        """A CONNECTION_CLOSE went out or came in (aioquic reports the end only after 3 PTOs)."""
        return self.conn is not None and self.conn._close_event is not None and not self.conn._close_pending

    @property
    def ready(self) -> bool:
        """The handshake is done: messages sent now go out at once (in 1-RTT packets)."""
        return self.conn is not None and self.conn._handshake_complete

    @property
    def waiting(self) -> int:
        """Bytes given to send() and not yet acknowledged by the peer."""
        if self.conn is None or STREAM not in self.conn._streams:
            return 0
        sender = self.conn._streams[STREAM].sender
        return sender._buffer_stop - sender._buffer_start

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    # -- the network's side -------------------------------------------------------------------

    def input(self, datagram: bytes, now: int) -> bool:
        self._now = (now & MASK) / 1000
        self.stats["datagrams_in"] += 1
        self.stats["bytes_in"] += len(datagram)
        if self.conn is None:
            if self.client:
                return False
            from aioquic.buffer import Buffer
            from aioquic.quic.connection import QuicConnection
            from aioquic.quic.packet import pull_quic_header
            try:
                header = pull_quic_header(Buffer(data=datagram), host_cid_length=self.config.connection_id_length)
            except ValueError:
                self.stats["dropped_header"] += 1
                return False
            self.conn = QuicConnection(configuration=self.config,
                                       original_destination_connection_id=header.destination_cid)
        self.conn.receive_datagram(bytes(datagram), self.peer, now=self._now)
        return True

    def update(self, now: int) -> None:
        self._now = (now & MASK) / 1000
        if self.conn is None:
            return
        timer = self.conn.get_timer()
        if timer is not None and timer <= self._now:
            self.conn.handle_timer(self._now)
        self._events()
        for datagram, _ in self.conn.datagrams_to_send(now=self._now):
            self._out.append(datagram)
            self.stats["datagrams_out"] += 1
            self.stats["bytes_out"] += len(datagram)

    def pop_output(self) -> list[bytes]:
        if self.conn is not None:           # what input() and send() made us owe, at once
            self.update(int(self._now * 1000))
        out, self._out = self._out, []
        return out

    def _events(self) -> None:
        from aioquic.quic import events
        if self.conn is None:
            return
        while (ev := self.conn.next_event()) is not None:
            if isinstance(ev, events.StreamDataReceived) and ev.stream_id == STREAM:
                self._rx += ev.data
