"""The KV store's RESP layer and request path, in process: Redis's protocol errors, inline
commands, split reads, limits, and a fuzz of arbitrary bytes (never a crash, bounded memory)."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpnlab.kv import commands  # noqa: F401
from hpnlab.kv.core import Server
from hpnlab.kv.resp import ProtocolError, parse_requests, split_inline


def client(**config):
    return Server(**config).new_client()


def test_multibulk_and_inline_and_pipelining():
    c = client()
    out, close = c.feed(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nv1\r\nGET k\r\n*2\r\n$4\r\necho\r\n$0\r\n\r\n")
    assert (out, close) == (b"+OK\r\n$2\r\nv1\r\n$0\r\n\r\n", False)


def test_split_reads_join_once_enough_bytes_came():
    c = client()
    req = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100000\r\n" + b"x" * 100000 + b"\r\n"
    outs = [c.feed(req[i:i + 7000])[0] for i in range(0, len(req), 7000)]
    assert b"".join(outs) == b"+OK\r\n"
    assert c.feed(b"STRLEN k\r\n")[0] == b":100000\r\n"


@pytest.mark.parametrize("data,text", [
    (b"*x\r\n", "Protocol error: invalid multibulk length"),
    (b"*2000000\r\n", "Protocol error: invalid multibulk length"),
    (b"*1\r\n$-5\r\n", "Protocol error: invalid bulk length"),
    (b"*1\r\n$99999999999\r\n", "Protocol error: invalid bulk length"),
    (b"*1\r\n*1\r\n", "Protocol error: expected '$', got '*'"),
    (b"*1\r\n:1\r\n", "Protocol error: expected '$', got ':'"),
    (b"SET \"a b\"x\r\n", "Protocol error: unbalanced quotes in request"),
    (b"a" * (64 * 1024 + 1), "Protocol error: too big inline request"),
    (b"*" + b"1" * (64 * 1024 + 1), "Protocol error: too big mbulk count string"),
])
def test_protocol_errors_are_redis_texts_and_close(data, text):
    out, close = client().feed(data)
    assert out == b"-ERR " + text.encode() + b"\r\n"
    assert close


def test_commands_before_a_protocol_error_still_run():
    out, close = client().feed(b"PING\r\n*1\r\n$x\r\n")
    assert out == b"+PONG\r\n-ERR Protocol error: invalid bulk length\r\n" and close


def test_unauthenticated_limits_and_noauth():
    c = client(requirepass="pw")
    assert c.feed(b"GET k\r\n")[0] == b"-NOAUTH Authentication required.\r\n"
    out, close = c.feed(b"*11\r\n")
    assert out == b"-ERR Protocol error: unauthenticated multibulk length\r\n" and close
    c = client(requirepass="pw")
    assert c.feed(b"AUTH pw\r\nGET k\r\n")[0] == b"+OK\r\n$-1\r\n"


def test_query_buffer_limit_closes():
    c = client(**{"client-query-buffer-limit": 1000})
    out, close = c.feed(b"*1\r\n$900\r\n" + b"x" * 500)
    assert not close
    out, close = c.feed(b"x" * 600)
    assert close and out == b""


def test_split_inline_quotes_and_escapes():
    assert split_inline(b'set "a\\x41\\n" \'b\\\'c\'  d') == [b"set", b"a\x41\n", b"b'c", b"d"]
    with pytest.raises(ProtocolError):
        split_inline(b'"open')


def test_unknown_command_and_arity_texts():
    c = client()
    assert c.feed(b"FOO a b\r\n")[0] == b"-ERR unknown command 'FOO', with args beginning with: 'a' 'b' \r\n"
    assert c.feed(b"GET\r\n")[0] == b"-ERR wrong number of arguments for 'get' command\r\n"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_fuzz_arbitrary_bytes_never_crash(chunks):
    c = client(**{"client-query-buffer-limit": 4096})
    for chunk in chunks:
        out, close = c.feed(chunk)
        assert isinstance(out, bytes)
        assert sum(map(len, c.pending)) <= 4096 + 64
        if close:
            break


def test_fuzz_mutated_valid_requests():
    """Valid pipelines with random byte flips, cuts and repeats: every reply is a well-formed RESP
    frame start, and the parser either parses, waits or errs with a Protocol error."""
    rng = random.Random(17)
    base = (b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n"
            b"*4\r\n$5\r\nRPUSH\r\n$1\r\nl\r\n$1\r\na\r\n$1\r\nb\r\nPING\r\n")
    for _ in range(3000):
        data = bytearray(base * rng.randint(1, 3))
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data))
            op = rng.random()
            if op < 0.5:
                data[i] = rng.randrange(256)
            elif op < 0.75:
                del data[i:i + rng.randint(1, 8)]
            else:
                data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        c = client()
        out, _close = c.feed(bytes(data))
        assert out[:1] in (b"", b"+", b"-", b"$", b":", b"*")
        try:
            parse_requests(bytes(data), 0, 512 * 1024 * 1024)
        except ProtocolError as exc:
            assert exc.args[0].startswith("Protocol error: ")


def test_fast_path_agrees_with_the_general_parser():
    """Values with CRLF inside, big values, inline lines and cut tails: the CRLF-split fast path
    must hand over to the byte-by-byte parser exactly where it cannot vouch for the input."""
    from hpnlab.kv.resp import _parse
    rng = random.Random(5)
    pieces = [b"a", b"a\r\nb", b"\r\n", b"x" * 5000, b"", b"$3", b"*2"]
    for _ in range(2000):
        data = b""
        for _ in range(rng.randint(1, 6)):
            if rng.random() < 0.15:
                data += b"PING\r\n"
                continue
            args = [b"SET"] + [rng.choice(pieces) for _ in range(rng.randint(1, 3))]
            data += b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)
        data = data[:rng.randint(len(data) // 2, len(data))]
        assert parse_requests(data, 0, 1 << 29) == _parse(data, 0, 1 << 29, True, [])


@pytest.mark.parametrize("argc", [1, 2, 3, 4])
def test_a_lone_command_with_a_lying_header_is_not_vouched_for(argc):
    """One whole command per read (-P 1) is checked unrolled for 2 and 3 arguments: a wrong
    $len in any position must hand over to the general parser, as for other arities."""
    from hpnlab.kv.resp import _parse
    args = [b"SET", b"key", b"value", b"more"][:argc]
    for bad in range(argc):
        for delta in (-1, 1):
            data = b"*%d\r\n" % argc + b"".join(b"$%d\r\n%b\r\n" % (len(a) + delta * (i == bad), a)
                                               for i, a in enumerate(args))
            assert outcome(parse_requests, data, 0, 1 << 29) == outcome(_parse, data, 0, 1 << 29, True, [])


def outcome(parse, *args):
    try:
        return parse(*args)
    except ProtocolError as exc:
        return exc.args[0]


def test_uniform_pipelines_agree_with_the_general_parser():
    """Pipelines whose commands all take the same number of arguments go column by column
    (resp._uniform); a value with CRLF inside or a wrong $len must still hand over."""
    from hpnlab.kv.resp import _parse, _uniform
    rng = random.Random(7)
    pieces = [b"a", b"a\r\nb", b"\r\n", b"x" * 300, b"", b"$3", b"*2", b"k" * 16]
    taken = 0
    for _ in range(2000):
        argc = rng.randint(1, 4)
        cmds = [[b"SET"] + [rng.choice(pieces) for _ in range(argc - 1)] for _ in range(rng.randint(2, 20))]
        data = b"".join(b"*%d\r\n" % argc + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in c) for c in cmds)
        if rng.random() < 0.1:
            data = data.replace(b"$3\r\nSET", b"$4\r\nSET", 1)     # a lying header: no longer vouched for
        assert outcome(parse_requests, data, 0, 1 << 29) == outcome(_parse, data, 0, 1 << 29, True, [])
        taken += _uniform(data.split(b"\r\n"), argc, data.count(b"\r\n"), [])
    assert taken > 100, "the uniform path is taken for clean pipelines"
