"""RDB snapshots in Redis's format (version 10, Redis 7.0), written by SAVE/BGSAVE and
loaded at startup.

Written: strings, lists (RDB_TYPE_LIST), sets, sorted sets (ZSET_2, binary doubles),
hashes, millisecond expiries, aux fields and the CRC64 (Jones) trailer - plain
encodings any Redis since 4.0 loads. Read: those plus what Redis 7.0 itself writes
for small values - integer and LZF-compressed strings, intsets, listpacks (hashes,
sorted sets) and quicklist2 lists of listpacks.
"""
from __future__ import annotations

import os
import struct
import time
from collections import deque
from typing import Any

from ...errors import HpnlabError
from ..core import Server

RDB_VERSION = 10
T_STRING, T_LIST, T_SET, T_ZSET, T_HASH, T_ZSET2 = 0, 1, 2, 3, 4, 5
T_SET_INTSET, T_HASH_ZIPLIST, T_ZSET_ZIPLIST, T_LIST_QUICKLIST = 11, 13, 12, 14
T_HASH_LISTPACK, T_ZSET_LISTPACK, T_LIST_QUICKLIST2 = 16, 17, 18
OP_FUNCTION2, OP_MODULE_AUX, OP_IDLE, OP_FREQ, OP_AUX = 245, 247, 248, 249, 250
OP_RESIZEDB, OP_EXPIRETIME_MS, OP_EXPIRETIME, OP_SELECTDB, OP_EOF = 251, 252, 253, 254, 255


class RdbError(HpnlabError):
    """A dump.rdb the store cannot load (the message names the file and byte)."""
    hint = "move the file away (or check it with `redis-check-rdb FILE`), or start with another --dir"


def _crc_table() -> list[int]:
    poly = 0x95AC9329AC4BC9B5        # Jones' polynomial 0xad93d23594c935a9, bit-reflected
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc_table()


def crc64(data: bytes, crc: int = 0) -> int:
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


# -- writing ------------------------------------------------------------------------
def _len(n: int) -> bytes:
    if n < 1 << 6:
        return bytes([n])
    if n < 1 << 14:
        return bytes([0x40 | (n >> 8), n & 0xFF])
    if n < 1 << 32:
        return b"\x80" + struct.pack(">I", n)
    return b"\x81" + struct.pack(">Q", n)


def _str(s: bytes) -> bytes:
    return _len(len(s)) + s


def dump(server: Server) -> bytes:
    from ..commands.keys import type_name
    out = [b"REDIS%04d" % RDB_VERSION]
    for k, v in ((b"redis-ver", b"7.0.15"), (b"redis-bits", b"64"), (b"ctime", b"%d" % time.time()),
                 (b"used-mem", b"0"), (b"aof-base", b"0")):
        out.append(bytes([OP_AUX]) + _str(k) + _str(v))
    now = time.time() * 1000
    for db in server.dbs:
        if not len(db.data):
            continue
        out.append(bytes([OP_SELECTDB]) + _len(db.num))
        out.append(bytes([OP_RESIZEDB]) + _len(len(db.data)) + _len(len(db.expires)))
        for key in list(db.data):
            v = db.data.get(key)
            when = db.expires.get(key)
            if when is not None:
                if when <= now:
                    continue
                out.append(bytes([OP_EXPIRETIME_MS]) + struct.pack("<q", int(when)))
            t = type_name(v)
            if t == b"string":
                out.append(bytes([T_STRING]) + _str(key) + _str(v))
            elif t == b"list":
                out.append(bytes([T_LIST]) + _str(key) + _len(len(v)) + b"".join(_str(x) for x in v))
            elif t == b"set":
                out.append(bytes([T_SET]) + _str(key) + _len(len(v)) + b"".join(_str(x) for x in v))
            elif t == b"hash":
                out.append(bytes([T_HASH]) + _str(key) + _len(len(v)) +
                           b"".join(_str(f) + _str(x) for f, x in v.items()))
            else:
                # ZSET_2 is written in descending score order, as Redis does (loads faster)
                items = sorted(v.scores.items(), key=lambda ms: ms[1], reverse=True)
                out.append(bytes([T_ZSET2]) + _str(key) + _len(len(items)) +
                           b"".join(_str(m) + struct.pack("<d", s) for m, s in items))
    out.append(bytes([OP_EOF]))
    body = b"".join(out)
    return body + struct.pack("<Q", crc64(body))


def save(server: Server, path: str | None = None) -> None:
    path = path or os.path.join(server.config["dir"], server.config["dbfilename"])
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(dump(server))
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def bgsave(server: Server) -> bool:
    if server.bgsave_child:
        return False
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            save(server)
            code = 0
        finally:
            os._exit(code)
    server.bgsave_child = pid
    return True


def reap(server: Server) -> None:
    """From the cron: collect a finished BGSAVE child."""
    if not server.bgsave_child:
        return
    pid, status = os.waitpid(server.bgsave_child, os.WNOHANG)
    if pid:
        server.bgsave_child = 0
        if os.waitstatus_to_exitcode(status) == 0:
            server.last_save = int(time.time())
            server.dirty = 0


# -- reading ------------------------------------------------------------------------
class Reader:
    def __init__(self, data: bytes, name: str):
        self.data, self.pos, self.name = data, 0, name

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise RdbError(f"{self.name}: truncated at byte {self.pos}")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def byte(self) -> int:
        return self.take(1)[0]

    def length(self) -> tuple[int, bool]:
        """(length, is_special_encoding)."""
        b = self.byte()
        kind = b >> 6
        if kind == 0:
            return b & 0x3F, False
        if kind == 1:
            return ((b & 0x3F) << 8) | self.byte(), False
        if kind == 3:
            return b & 0x3F, True
        if b == 0x80:
            return struct.unpack(">I", self.take(4))[0], False
        if b == 0x81:
            return struct.unpack(">Q", self.take(8))[0], False
        raise RdbError(f"{self.name}: bad length byte {b:#x} at {self.pos - 1}")

    def num(self) -> int:
        n, special = self.length()
        if special:
            raise RdbError(f"{self.name}: encoded value where a length belongs at {self.pos}")
        return n

    def string(self) -> bytes:
        n, special = self.length()
        if not special:
            return self.take(n)
        if n == 0:
            return b"%d" % struct.unpack("<b", self.take(1))[0]
        if n == 1:
            return b"%d" % struct.unpack("<h", self.take(2))[0]
        if n == 2:
            return b"%d" % struct.unpack("<i", self.take(4))[0]
        if n == 3:
            clen, ulen = self.num(), self.num()
            return lzf_decompress(self.take(clen), ulen)
        raise RdbError(f"{self.name}: unknown string encoding {n}")


def lzf_decompress(src: bytes, ulen: int) -> bytes:
    out = bytearray()
    i, n = 0, len(src)
    while i < n:
        ctrl = src[i]
        i += 1
        if ctrl < 32:
            out += src[i:i + ctrl + 1]
            i += ctrl + 1
        else:
            length = ctrl >> 5
            if length == 7:
                length += src[i]
                i += 1
            ref = len(out) - ((ctrl & 0x1F) << 8) - src[i] - 1
            i += 1
            for _ in range(length + 2):
                out.append(out[ref])
                ref += 1
    if len(out) != ulen:
        raise RdbError(f"LZF data decompressed to {len(out)} bytes, expected {ulen}")
    return bytes(out)


def listpack_items(lp: bytes) -> list[bytes]:
    """The entries of a listpack (integers as their decimal strings)."""
    items: list[bytes] = []
    p = 6
    while p < len(lp):
        b = lp[p]
        if b == 0xFF:
            break
        if b < 0x80:
            val, size = b"%d" % b, 1
        elif b < 0xC0:
            n = b & 0x3F
            val, size = lp[p + 1:p + 1 + n], 1 + n
        elif b < 0xE0:
            v = ((b & 0x1F) << 8) | lp[p + 1]
            val, size = b"%d" % (v - (1 << 13) if v >= 1 << 12 else v), 2
        elif b < 0xF0:
            n = ((b & 0x0F) << 8) | lp[p + 1]
            val, size = lp[p + 2:p + 2 + n], 2 + n
        elif b == 0xF0:
            n = struct.unpack("<I", lp[p + 1:p + 5])[0]
            val, size = lp[p + 5:p + 5 + n], 5 + n
        elif b in (0xF1, 0xF2, 0xF3, 0xF4):
            w = {0xF1: 2, 0xF2: 3, 0xF3: 4, 0xF4: 8}[b]
            val, size = b"%d" % int.from_bytes(lp[p + 1:p + 1 + w], "little", signed=True), 1 + w
        else:
            raise RdbError(f"listpack: unknown entry encoding {b:#x}")
        items.append(val)
        p += size
        p += 1 if size < 128 else 2 if size < 16384 else 3 if size < 2097152 else 4 if size < 268435456 else 5
    return items


def intset_items(blob: bytes) -> list[bytes]:
    width, count = struct.unpack("<II", blob[:8])
    return [b"%d" % int.from_bytes(blob[8 + i * width:8 + (i + 1) * width], "little", signed=True)
            for i in range(count)]


def _value(r: Reader, t: int) -> Any:
    from ..commands.zsets import ZSet
    if t == T_STRING:
        return r.string()
    if t == T_LIST:
        return deque(r.string() for _ in range(r.num()))
    if t == T_SET:
        return {r.string() for _ in range(r.num())}
    if t == T_SET_INTSET:
        return set(intset_items(r.string()))
    if t == T_HASH:
        return {r.string(): r.string() for _ in range(r.num())}
    if t == T_HASH_LISTPACK:
        items = listpack_items(r.string())
        return dict(zip(items[0::2], items[1::2]))
    if t in (T_ZSET, T_ZSET2, T_ZSET_LISTPACK):
        z = ZSet()
        if t == T_ZSET_LISTPACK:
            items = listpack_items(r.string())
            for m, s in zip(items[0::2], items[1::2]):
                z.add(m, float(s))
            return z
        for _ in range(r.num()):
            m = r.string()
            if t == T_ZSET2:
                score: float = struct.unpack("<d", r.take(8))[0]
            else:
                n = r.byte()
                score = {253: float("nan"), 254: float("inf"), 255: float("-inf")}[n] \
                    if n >= 253 else float(r.take(n))
            z.add(m, score)
        return z
    if t == T_LIST_QUICKLIST2:
        lst: deque[bytes] = deque()
        for _ in range(r.num()):
            container = r.num()
            blob = r.string()
            lst.extend([blob] if container == 1 else listpack_items(blob))
        return lst
    raise RdbError(f"{r.name}: value type {t} at byte {r.pos} is not supported "
                   f"(strings, lists, sets, hashes, sorted sets are)")


def load_bytes(server: Server, data: bytes, name: str) -> int:
    if not data.startswith(b"REDIS") or not data[5:9].isdigit():
        raise RdbError(f"{name}: not an RDB file (no REDIS<version> header)")
    version = int(data[5:9])
    if version > 11:
        raise RdbError(f"{name}: RDB version {version} is newer than this loader knows (<= 11)")
    if version >= 5 and len(data) > 17:
        want = struct.unpack("<Q", data[-8:])[0]
        if want and crc64(data[:-8]) != want:      # 0: written with rdbchecksum no
            raise RdbError(f"{name}: CRC64 mismatch (the file is corrupt or truncated)")
    r = Reader(data, name)
    r.pos = 9
    db = server.dbs[0]
    expire: int | None = None
    n = 0
    now = time.time() * 1000
    while True:
        op = r.byte()
        if op == OP_EOF:
            break
        if op == OP_SELECTDB:
            num = r.num()
            if num >= len(server.dbs):
                raise RdbError(f"{name}: database {num} out of range (databases {len(server.dbs)})")
            db = server.dbs[num]
        elif op == OP_RESIZEDB:
            r.num()
            r.num()
        elif op == OP_AUX:
            r.string()
            r.string()
        elif op == OP_EXPIRETIME_MS:
            expire = struct.unpack("<q", r.take(8))[0]
        elif op == OP_EXPIRETIME:
            expire = struct.unpack("<i", r.take(4))[0] * 1000
        elif op == OP_IDLE:
            r.num()
        elif op == OP_FREQ:
            r.byte()
        elif op in (OP_FUNCTION2, OP_MODULE_AUX):
            raise RdbError(f"{name}: functions and module data are not supported")
        else:
            key = r.string()
            value = _value(r, op)
            if expire is None or expire > now:
                db.set(key, value)
                if expire is not None:
                    db.set_expire(key, expire)
                n += 1
            expire = None
    return n


def load(server: Server) -> int:
    path = os.path.join(server.config["dir"], server.config["dbfilename"])
    if not os.path.exists(path):
        return 0
    with open(path, "rb") as f:
        n = load_bytes(server, f.read(), path)
    server.dirty = 0
    return n
