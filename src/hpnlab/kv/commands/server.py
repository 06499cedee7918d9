"""Connection, server and transaction commands."""
from __future__ import annotations

import os
import platform
import time

from .. import resp
from ..core import COMMANDS, SYNTAX, Client, command
from ..memory import POLICIES, parse_size
from ..resp import OK, bulk, bulks
from .args import to_int

MEMORY_CONFIG = {"maxmemory", "proto-max-bulk-len", "client-query-buffer-limit"}

VERSION = b"7.0.15"     # the redis_version clients see (the RESP/command set we follow)


@command("ping", -1, "fast noauth")
def ping(c: Client, args: list[bytes]) -> bytes:
    if len(args) > 2:
        return resp.error("ERR wrong number of arguments for 'ping' command")
    if not c.authed:
        return b"-NOAUTH Authentication required.\r\n"
    return resp.PONG if len(args) == 1 else bulk(args[1])


@command("echo", 2, "fast")
def echo(c: Client, args: list[bytes]) -> bytes:
    return bulk(args[1])


@command("quit", -1, "fast noauth notx")
def quit_(c: Client, args: list[bytes]) -> bytes:
    c.closing = True
    return OK


def _auth(c: Client, password: bytes) -> bytes | None:
    want = c.server.config["requirepass"]
    if not want:
        return b"-ERR AUTH <password> called without any password configured for the default user. " \
               b"Are you sure your configuration is correct?\r\n"
    if password != want.encode():
        return b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    c.authed = True
    return None


@command("auth", -2, "fast noauth")
def auth(c: Client, args: list[bytes]) -> bytes:
    if len(args) > 3:
        return SYNTAX
    if len(args) == 3 and args[1] != b"default":
        return b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    return _auth(c, args[-1]) or OK


@command("hello", -1, "fast noauth")
def hello(c: Client, args: list[bytes]) -> bytes:
    ver = 2 if not c.resp3 else 3
    if len(args) > 1:
        v = to_int(args[1])
        if v is None:
            return b"-ERR Protocol version is not an integer or out of range\r\n"
        if v not in (2, 3):
            return b"-NOPROTO unsupported protocol version\r\n"
        ver = v
    i = 2
    while i < len(args):
        opt = args[i].upper()
        if opt == b"AUTH" and i + 2 < len(args):
            err = _auth(c, args[i + 2])
            if err:
                return err
            i += 3
        elif opt == b"SETNAME" and i + 1 < len(args):
            c.name = args[i + 1]
            i += 2
        else:
            return resp.error(f"ERR Syntax error in HELLO option '{args[i].decode(errors='replace')}'")
    if not c.authed:
        return b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the " \
               b"HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and " \
               b"select the RESP protocol version at the same time\r\n"
    c.set_protocol(ver == 3)
    fields = [(b"server", bulk(b"redis")), (b"version", bulk(VERSION)), (b"proto", b":%d\r\n" % ver),
              (b"id", b":%d\r\n" % c.id), (b"mode", bulk(b"standalone")), (b"role", bulk(b"master")),
              (b"modules", resp.EMPTY_ARRAY)]
    return map_reply(c, fields)


def map_reply(c: Client, fields: list[tuple[bytes, bytes]]) -> bytes:
    """A map of bulk names to encoded values: '%' in RESP3, a flat array in RESP2."""
    head = b"%%%d\r\n" % len(fields) if c.resp3 else b"*%d\r\n" % (2 * len(fields))
    return head + b"".join(bulk(k) + v for k, v in fields)


@command("select", 2, "fast")
def select(c: Client, args: list[bytes]) -> bytes:
    n = to_int(args[1])
    if n is None:
        return b"-ERR value is not an integer or out of range\r\n"
    if not 0 <= n < len(c.server.dbs):
        return b"-ERR DB index is out of range\r\n"
    c.db = c.server.dbs[n]
    return OK


@command("client", -2, "")
def client(c: Client, args: list[bytes]) -> bytes:
    sub = args[1].upper()
    if sub == b"ID" and len(args) == 2:
        return b":%d\r\n" % c.id
    if sub == b"GETNAME" and len(args) == 2:
        return bulk(c.name) if c.name else c.null
    if sub == b"SETNAME" and len(args) == 3:
        if any(ch <= 32 or ch > 126 for ch in args[2]):
            return b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
        c.name = args[2]
        return OK
    if sub == b"SETINFO" and len(args) == 4:
        attr = args[2].upper()
        if attr not in (b"LIB-NAME", b"LIB-VER"):
            return resp.error(f"ERR Unrecognized option '{args[2].decode(errors='replace')}'")
        c.lib[attr == b"LIB-VER"] = args[3]
        return OK
    if sub == b"LIST" and len(args) == 2:
        now = time.time()
        lines = [b"id=%d addr=? name=%b age=%d db=%d lib-name=%b lib-ver=%b" %
                 (o.id, o.name, now - o.created, o.db.num, o.lib[0], o.lib[1])
                 for o in c.server.clients.values()]
        return bulk(b"\n".join(lines) + b"\n")
    if sub in (b"ID", b"GETNAME", b"SETNAME", b"SETINFO", b"LIST"):
        return resp.error(f"ERR wrong number of arguments for 'client|{sub.lower().decode()}' command")
    return resp.error(f"ERR unknown subcommand '{args[1].decode(errors='replace')}'. Try CLIENT HELP.")


def _command_info(cmd) -> bytes:
    flags = [f.encode() for f in cmd.flags if f in ("write", "readonly", "fast")]
    return b"*10\r\n" + bulk(cmd.name.encode()) + b":%d\r\n" % cmd.arity + bulks(flags) + \
        b":%d\r\n:%d\r\n:%d\r\n" % (cmd.first, cmd.last, cmd.step) + b"*0\r\n*0\r\n*0\r\n*0\r\n"


@command("command", -1, "")
def command_(c: Client, args: list[bytes]) -> bytes:
    if len(args) == 1:
        return b"*%d\r\n" % len(COMMANDS) + b"".join(_command_info(x) for x in COMMANDS.values())
    sub = args[1].upper()
    if sub == b"COUNT":
        return b":%d\r\n" % len(COMMANDS)
    if sub == b"INFO":
        names = args[2:] or list(COMMANDS)
        return b"*%d\r\n" % len(names) + b"".join(
            _command_info(COMMANDS[n.lower()]) if n.lower() in COMMANDS else c.null_array for n in names)
    if sub == b"DOCS":
        names = [n.lower() for n in args[2:]] or list(COMMANDS)
        found = [n for n in names if n in COMMANDS]
        docs = [(n, map_reply(c, [(b"summary", bulk(b"")), (b"since", bulk(b"1.0.0")),
                                  (b"group", bulk(b"generic"))])) for n in found]
        return map_reply(c, docs)
    return resp.error(f"ERR unknown subcommand or wrong number of arguments for "
                      f"'{args[1].decode(errors='replace')}'. Try COMMAND HELP.")


def info_sections(c: Client) -> dict[str, list[tuple[str, object]]]:
    srv = c.server
    import resource
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    used = _rss()
    keyspace = [(f"db{db.num}", f"keys={len(db.data)},expires={len(db.expires)},avg_ttl=0")
                for db in srv.dbs if len(db.data)]
    return {
        "server": [("redis_version", VERSION.decode()), ("redis_mode", "standalone"),
                   ("os", f"{platform.system()} {platform.release()} {platform.machine()}"),
                   ("process_id", os.getpid()), ("tcp_port", srv.config["port"]),
                   ("uptime_in_seconds", int(time.time() - srv.started)),
                   ("hpnlab_engine", srv.engine_name), ("hpnlab_index", srv.config["index"])],
        "clients": [("connected_clients", len(srv.clients)),
                    ("blocked_clients", sum(len(w) for w in srv.blocking.values())),
                    ("maxclients", srv.config["maxclients"])],
        "memory": [("used_memory", used), ("used_memory_rss", used), ("used_memory_peak", rss),
                   ("used_memory_dataset", srv.memory.used if srv.memory else ""),
                   ("maxmemory", srv.config["maxmemory"]),
                   ("maxmemory_policy", srv.config["maxmemory-policy"])],
        "persistence": [("loading", 0), ("rdb_changes_since_last_save", srv.dirty),
                        ("rdb_bgsave_in_progress", int(bool(srv.bgsave_child))),
                        ("rdb_last_save_time", srv.last_save),
                        ("aof_enabled", int(srv.aof is not None)),
                        ("aof_rewrite_in_progress", int(bool(srv.aof and srv.aof.rewriting)))],
        "stats": [("total_connections_received", srv.connections_received),
                  ("total_commands_processed", srv.commands_processed),
                  ("expired_keys", srv.expired), ("evicted_keys", srv.memory.evicted if srv.memory else 0),
                  ("rejected_connections", srv.rejected_connections)],
        "replication": [("role", "master"), ("connected_slaves", 0)],
        "keyspace": keyspace,
    }


def _rss() -> int:
    """This process's resident memory now (INFO memory's used_memory)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


@command("info", -1, "")
def info(c: Client, args: list[bytes]) -> bytes:
    sections = info_sections(c)
    want = [a.decode(errors="replace").lower() for a in args[1:]]
    if not want or any(w in ("all", "everything", "default") for w in want):
        want = list(sections)
    lines = []
    for name in want:
        if name in sections:
            lines.append(f"# {name.capitalize()}")
            lines += [f"{k}:{v}" for k, v in sections[name]]
            lines.append("")
    text = "\r\n".join(lines).encode()
    return (b"=%d\r\ntxt:%b\r\n" % (len(text) + 4, text)) if c.resp3 else bulk(text)


CONFIG_INT = {"maxclients", "maxmemory", "proto-max-bulk-len", "client-query-buffer-limit", "databases", "port",
              "maxmemory-samples", "lfu-log-factor", "lfu-decay-time"}
CONFIG_SETTABLE = {"appendonly", "appendfsync", "requirepass", "maxclients", "maxmemory", "maxmemory-policy",
                   "proto-max-bulk-len", "client-query-buffer-limit", "dir", "dbfilename", "maxmemory-samples",
                   "lfu-log-factor", "lfu-decay-time"}
CONFIG_CHOICES = {"appendonly": ("yes", "no"), "appendfsync": ("always", "everysec", "no"),
                  "maxmemory-policy": POLICIES}


@command("config", -2, "")
def config(c: Client, args: list[bytes]) -> bytes:
    sub = args[1].upper()
    cfg = c.server.config
    if sub == b"GET" and len(args) >= 3:
        from .keys import matcher
        pairs: dict[str, str] = {}
        for pat in args[2:]:
            m = matcher(pat.lower())
            for k, v in cfg.items():
                if m(k.encode()):
                    pairs[k] = str(v)
        fields = [(k.encode(), bulk(v.encode())) for k, v in pairs.items()]
        return map_reply(c, fields)
    if sub == b"SET" and len(args) >= 4 and len(args) % 2 == 0:
        changes: dict[str, int | str] = {}
        for i in range(2, len(args), 2):
            name, raw = args[i].decode(errors="replace").lower(), args[i + 1].decode(errors="replace")
            if name not in CONFIG_SETTABLE:
                return resp.error(f"ERR Unknown option or number of arguments for CONFIG SET - '{name}'")
            if name in CONFIG_INT:
                n = parse_size(raw) if name in MEMORY_CONFIG else to_int(raw.encode())
                if n is None or n < 0:
                    return resp.error(f"ERR CONFIG SET failed (possibly related to argument '{name}') "
                                      f"- argument couldn't be parsed into an integer")
                if name == "maxmemory-samples" and not 1 <= n <= 64:
                    return resp.error(f"ERR CONFIG SET failed (possibly related to argument '{name}') "
                                      f"- argument must be between 1 and 64 inclusive")
                changes[name] = n
            elif name in CONFIG_CHOICES and raw.lower() not in CONFIG_CHOICES[name]:
                return resp.error(f"ERR CONFIG SET failed (possibly related to argument '{name}') "
                                  f"- argument(s) must be one of the following: {', '.join(CONFIG_CHOICES[name])}")
            else:
                changes[name] = raw.lower() if name in CONFIG_CHOICES else raw
        from ..persist import aof as aofmod
        for name, value in changes.items():
            if name == "appendonly" and value != cfg["appendonly"]:
                cfg[name] = value
                aofmod.set_appendonly(c.server, value == "yes")
            elif name == "maxmemory":
                c.server.set_maxmemory(int(value))
            else:
                cfg[name] = value
                if name == "appendfsync" and c.server.aof is not None:
                    c.server.aof.fsync = value
                if name == "maxmemory-policy" and c.server.memory is not None:
                    c.server.memory.policy_changed()
        return OK
    if sub == b"RESETSTAT" and len(args) == 2:
        c.server.commands_processed = c.server.expired = 0
        return OK
    return resp.error(f"ERR unknown subcommand or wrong number of arguments for "
                      f"'{args[1].decode(errors='replace')}'. Try CONFIG HELP.")


def _flush(c: Client, args: list[bytes], dbs) -> bytes:
    if len(args) > 2 or (len(args) == 2 and args[1].upper() not in (b"ASYNC", b"SYNC")):
        return SYNTAX
    for db in dbs:
        db.flush()
    c.server.dirty += 1
    return OK


@command("flushdb", -1, "write")
def flushdb(c: Client, args: list[bytes]) -> bytes:
    return _flush(c, args, [c.db])


@command("flushall", -1, "write")
def flushall(c: Client, args: list[bytes]) -> bytes:
    return _flush(c, args, c.server.dbs)


@command("time", 1, "fast")
def time_(c: Client, args: list[bytes]) -> bytes:
    t = time.time()
    return bulks([b"%d" % int(t), b"%d" % int((t - int(t)) * 1_000_000)])


@command("lastsave", 1, "fast")
def lastsave(c: Client, args: list[bytes]) -> bytes:
    return b":%d\r\n" % c.server.last_save


# -- transactions -----------------------------------------------------------------
@command("multi", 1, "fast notx")
def multi(c: Client, args: list[bytes]) -> bytes:
    if c.multi is not None:
        return b"-ERR MULTI calls can not be nested\r\n"
    c.multi = []
    c.multi_error = False
    return OK


@command("discard", 1, "fast notx")
def discard(c: Client, args: list[bytes]) -> bytes:
    if c.multi is None:
        return b"-ERR DISCARD without MULTI\r\n"
    c.multi = None
    c._release()
    c.dirty_cas = False
    return OK


@command("exec", 1, "notx")
def exec_(c: Client, args: list[bytes]) -> bytes:
    if c.multi is None:
        return b"-ERR EXEC without MULTI\r\n"
    queued, c.multi = c.multi, None
    aborted, dirty = c.multi_error, c.dirty_cas
    c._release()
    c.dirty_cas = c.multi_error = False
    if aborted:
        return b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    if dirty:
        return c.null_array
    srv = c.server
    out = []
    c.in_exec = True
    for cmd, cargs in queued:
        before = srv.dirty
        out.append(cmd.func(c, cargs))
        srv.commands_processed += 1
        if srv.dirty != before:
            c._after_write(cmd, cargs)
    c.in_exec = False
    return b"*%d\r\n" % len(out) + b"".join(out)


@command("watch", -2, "fast notx", 1, -1)
def watch(c: Client, args: list[bytes]) -> bytes:
    if c.multi is not None:
        return b"-ERR WATCH inside MULTI is not allowed\r\n"
    db = c.db
    for key in args[1:]:
        if (db, key) not in c.watching:
            c.watching.append((db, key))
            db.watched.setdefault(key, set()).add(c)
    return OK


@command("unwatch", 1, "fast notx")
def unwatch(c: Client, args: list[bytes]) -> bytes:
    c._release()
    c.dirty_cas = False
    return OK


@command("reset", 1, "fast noauth notx")
def reset(c: Client, args: list[bytes]) -> bytes:
    c.multi = None
    c._release()
    c.dirty_cas = False
    c.db = c.server.dbs[0]
    c.set_protocol(False)
    c.name = b""
    c.authed = not c.server.config["requirepass"]
    return b"+RESET\r\n"




# -- persistence ------------------------------------------------------------------
@command("save", 1, "")
def save(c: Client, args: list[bytes]) -> bytes:
    from ..persist import rdb
    if c.server.bgsave_child:
        return b"-ERR Background save already in progress\r\n"
    rdb.save(c.server)
    c.server.last_save = int(time.time())
    return OK


@command("bgsave", -1, "")
def bgsave(c: Client, args: list[bytes]) -> bytes:
    from ..persist import rdb
    if not rdb.bgsave(c.server):
        return b"-ERR Background save already in progress\r\n"
    return b"+Background saving started\r\n"


@command("bgrewriteaof", 1, "")
def bgrewriteaof(c: Client, args: list[bytes]) -> bytes:
    aof = c.server.aof
    if aof is None:
        from ..persist import aof as aofmod
        aofmod.set_appendonly(c.server, True)
        c.server.config["appendonly"] = "yes"
        return b"+Background append only file rewriting started\r\n"
    if not aof.start_rewrite():
        return b"-ERR Background append only file rewriting already in progress\r\n"
    return b"+Background append only file rewriting started\r\n"
