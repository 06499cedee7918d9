"""The append-only file, in Redis's format: every write command as a RESP array,
a SELECT before the first command of another database (Redis's feedAppendOnlyFile).

appendfsync (when a write is on disk):
    always    written and fsynced before the replies of the read that carried it are sent:
              an acknowledged write survives kill -9 and power loss
    everysec  written before the replies, fsynced by a thread once a second
    no        written before the replies; the kernel flushes when it likes (survives kill -9)

BGREWRITEAOF forks: the child writes the dataset as commands to a temporary file,
the parent keeps appending and also buffers what arrives meanwhile; when the child
is done the buffer is appended to the new file, which replaces the old one (rename).
"""
from __future__ import annotations

import os
import threading
import time
from collections import deque
from typing import Any

from ...errors import HpnlabError
from ..core import Client, Server, encode_request
from ..resp import ProtocolError, parse_requests


class AofError(HpnlabError):
    """An append-only file the store cannot replay (the message names the file and byte)."""
    hint = "repair it as the message says, or start with another --dir"


class Aof:
    def __init__(self, server: Server, path: str, fsync: str):
        self.server, self.path, self.fsync = server, path, fsync
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.buf = bytearray()
        self.last_db = -1
        self.rewriting = 0                # the child's pid while a rewrite runs
        self.rewrite_buf: bytearray | None = None
        self.dirty_since_sync = False
        self.closed = False
        self.syncer = threading.Thread(target=self._everysec, name="aof-fsync", daemon=True)
        self.syncer.start()

    def feed(self, dbnum: int, args: list[bytes]) -> None:
        out = b""
        if dbnum != self.last_db:
            out = encode_request([b"SELECT", b"%d" % dbnum])
            self.last_db = dbnum
        out += encode_request(args)
        self.buf += out
        if self.rewrite_buf is not None:
            self.rewrite_buf += out

    def flush(self) -> None:
        data = memoryview(bytes(self.buf))
        self.buf.clear()
        while data:
            n = os.write(self.fd, data)
            data = data[n:]
        if self.fsync == "always":
            os.fdatasync(self.fd)
        else:
            self.dirty_since_sync = True

    def _everysec(self) -> None:
        while not self.closed:
            time.sleep(1)
            if self.fsync == "everysec" and self.dirty_since_sync and not self.closed:
                self.dirty_since_sync = False
                try:
                    os.fdatasync(self.fd)
                except OSError:
                    pass

    def close(self) -> None:
        if not self.closed:
            if self.buf:
                self.flush()
            os.fsync(self.fd)
            self.closed = True
            os.close(self.fd)

    # -- background rewrite ---------------------------------------------------------
    def start_rewrite(self) -> bool:
        if self.rewriting:
            return False
        tmp = f"{self.path}.rewrite-{os.getpid()}"
        self.rewrite_buf = bytearray()
        pid = os.fork()
        if pid == 0:                       # the child: write the snapshot, never return
            code = 1
            try:
                with open(tmp, "wb") as f:
                    write_dataset(self.server, f)
                    f.flush()
                    os.fsync(f.fileno())
                code = 0
            finally:
                os._exit(code)
        self.rewriting = pid
        self.server.bgsave_child = self.server.bgsave_child or 0
        return True

    def finish_rewrite(self, ok: bool) -> None:
        tmp = f"{self.path}.rewrite-{os.getpid()}"
        pending, self.rewrite_buf = self.rewrite_buf or b"", None
        self.rewriting = 0
        if not ok:
            if os.path.exists(tmp):
                os.unlink(tmp)
            return
        if self.buf:
            self.flush()
        with open(tmp, "ab") as f:
            f.write(pending)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self.path)
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self.last_db = -1

    def poll_rewrite(self) -> None:
        if not self.rewriting:
            return
        pid, status = os.waitpid(self.rewriting, os.WNOHANG)
        if pid:
            self.finish_rewrite(os.waitstatus_to_exitcode(status) == 0)


def write_dataset(server: Server, f: Any) -> None:
    """The dataset as the fewest commands that rebuild it (what a rewrite writes)."""
    from ..commands.keys import type_name
    now = time.time() * 1000
    for db in server.dbs:
        if not len(db.data):
            continue
        f.write(encode_request([b"SELECT", b"%d" % db.num]))
        for key in list(db.data):
            v = db.data.get(key)
            when = db.expires.get(key)
            if v is None or (when is not None and when <= now):
                continue
            t = type_name(v)
            if t == b"string":
                f.write(encode_request([b"SET", key, v]))
            elif t == b"list":
                f.write(encode_request([b"RPUSH", key, *v]))
            elif t == b"hash":
                f.write(encode_request([b"HSET", key, *[x for kv in v.items() for x in kv]]))
            elif t == b"set":
                f.write(encode_request([b"SADD", key, *v]))
            else:
                from ..resp import fmt_double
                f.write(encode_request([b"ZADD", key, *[x for m, s in v.scores.items()
                                                        for x in (fmt_double(s), m)]]))
            if when is not None:
                f.write(encode_request([b"PEXPIREAT", key, b"%d" % when]))


def set_appendonly(server: Server, on: bool) -> None:
    """CONFIG SET appendonly / startup: open the AOF (writing the dataset first if the file is new)."""
    if on and server.aof is None:
        path = os.path.join(server.config["dir"], server.config["appendfilename"])
        fresh = not os.path.exists(path) or os.path.getsize(path) == 0
        if fresh and any(len(db.data) for db in server.dbs):
            with open(path, "wb") as f:
                write_dataset(server, f)
                f.flush()
                os.fsync(f.fileno())
        server.aof = Aof(server, path, server.config["appendfsync"])
    elif not on and server.aof is not None:
        server.aof.close()
        server.aof = None


def replay(server: Server, data: bytes, name: str) -> int:
    """Run the commands of an AOF (no client replies); returns how many ran."""
    c = Client(server)
    try:
        cmds, pos, _need = parse_requests(data, 0, server.config["proto-max-bulk-len"])
    except ProtocolError as exc:
        raise AofError(f"{name}: bad RESP ({exc.args[0]}); `redis-check-aof --fix {name}` "
                       f"truncates it to the last complete command") from None
    if pos != len(data):
        raise AofError(f"{name}: ends inside a command at byte {pos} of {len(data)}; "
                       f"`redis-check-aof --fix {name}` truncates it to the last complete command")
    for args in cmds:
        r = c.execute(args)
        if r.startswith(b"-"):
            raise AofError(f"{name}: command {args[0].decode(errors='replace')} failed: "
                           f"{r[1:].decode(errors='replace').strip()}")
    return len(cmds)


def load(server: Server) -> int:
    """Load the AOF of the configured dir: our single file, or else Redis 7's appendonlydir
    (manifest: a base file, RDB or AOF, then the incremental AOFs). Started on Redis 7's files,
    the store writes the dataset to a single file of its own, which is what it loads from then on."""
    d = server.config["dir"]
    single = os.path.join(d, server.config["appendfilename"])
    manifest = os.path.join(d, "appendonlydir", server.config["appendfilename"] + ".manifest")
    files: deque[tuple[str, str]] = deque()
    if os.path.exists(single):
        files.append((single, "i"))
    elif os.path.exists(manifest):
        for line in open(manifest, encoding="utf-8"):
            f = dict(zip(line.split()[0::2], line.split()[1::2]))
            if "file" in f:
                kind = f.get("type")
                entry = (os.path.join(d, "appendonlydir", f["file"]), kind or "i")
                if kind == "b":
                    files.appendleft(entry)
                else:
                    files.append(entry)
    n = 0
    for path, _kind in files:
        with open(path, "rb") as fh:
            data = fh.read()
        if data.startswith(b"REDIS"):
            from . import rdb
            rdb.load_bytes(server, data, path)
        else:
            n += replay(server, data, path)
    server.dirty = 0
    return n
