"""`hpnlab kv serve --engine ustack`: the store on the user-space TCP/IP stack, which takes h1's
NIC on the ustack lab's `stack` LAN (labs/ustack/lab.yml, real namespaces); redis-py and
redis-cli on h2 reach it through h2's kernel TCP."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hpnlab.labs._kit import agent_python
from hpnlab.testing import REPO
from hpnlab.ustack.interop import stack_ip

pytestmark = [pytest.mark.integration]

PORT = 6390
# run on h2 with redis-py: single commands, a pipeline, and a value of many segments each way
CLIENT = """
import hashlib, json, sys, redis
r = redis.Redis(host=sys.argv[1], port=int(sys.argv[2]), socket_timeout=20)
out = {"ping": r.ping(), "set": r.set("k", "v"), "get": r.get("k").decode(), "incr": r.incr("n", 5)}
p = r.pipeline(transaction=False)
for i in range(200):
    p.set(f"p{i}", i)
    p.get(f"p{i}")
out["pipeline"] = [int(v) for v in p.execute()[1::2]] == list(range(200))
big = bytes(range(256)) * 1500                      # 384,000 bytes: some 260 segments of 1460
r.set("big", big)
back = r.get("big")
out["big"] = [len(back), hashlib.sha256(back).hexdigest() == hashlib.sha256(big).hexdigest()]
out["mget"] = [v.decode() for v in r.mget("k", "p7")]
out["blpop"] = r.blpop(["nothing"], 0.3)            # answered later, from the Reactor's timer on the stack
print(json.dumps(out))
"""


def test_store_on_the_user_space_stack(lab_factory):
    lab = lab_factory(REPO / "labs/ustack/lab.yml")
    h1, h2 = lab.host("h1"), lab.host("h2")
    ip = stack_ip(h1, "stack")
    addr = ip.split("/")[0]
    server = h1.start([agent_python(h1), "-m", "hpnlab.cli", "kv", "serve", "--engine", "ustack",
                       "--ifname", h1.nic("stack").ifname, "--ip", ip, "--port", str(PORT)], name="kv-ustack")
    try:
        # the store listens on the stack's socket, which h1's kernel (and its `ss`) never sees
        for _ in range(100):
            res = h2.run(["redis-cli", "-h", addr, "-p", str(PORT), "PING"], timeout=10, check=False)
            if res.stdout.strip() == "PONG":
                break
            assert server.alive(), server.logs()
        assert h1.run(["ss", "-H", "-lnt", f"sport = :{PORT}"]).stdout.strip() == ""
        res = h2.run([agent_python(h2), "-c", CLIENT, addr, str(PORT)], timeout=60, check=False)
        assert res.rc == 0, res.stderr
        out = json.loads(res.stdout)
        assert out == {"ping": True, "set": True, "get": "v", "incr": 5, "pipeline": True,
                       "big": [384000, True], "mget": ["v", "7"], "blpop": None}
        # a pipeline redis-cli sends as one write (--pipe), and the reply to each command
        piped = h2.run(["sh", "-c", f"printf 'SET a 1\\r\\nINCR a\\r\\nGET a\\r\\n' | redis-cli -h {addr} "
                                    f"-p {PORT} --pipe"], timeout=30)
        assert "errors: 0, replies: 3" in piped.stdout
        assert h2.run(["redis-cli", "-h", addr, "-p", str(PORT), "GET", "a"]).stdout.strip() == "2"
    finally:
        rc = server.stop(10)
    assert rc in (0, -15, 143, None), server.logs()
    assert "engine=ustack (afpacket on eth2)" in server.logs()[1]


def test_stack_options_are_checked(tmp_path):
    """The NIC options belong to --engine ustack, which needs --ifname and --ip and listens on --ip."""
    exe = str(Path(sys.executable).parent / "hpnlab")

    def serve(*args):
        return subprocess.run([exe, "kv", "serve", "--dir", str(tmp_path), *args], capture_output=True, text=True,
                              timeout=30)
    bad = serve("--engine", "epoll-lt", "--ifname", "nosuchnic0")
    assert bad.returncode == 2 and "--ifname: only with --engine ustack" in bad.stderr
    bad = serve("--engine", "ustack", "--ip", "10.0.0.101/24")
    assert bad.returncode == 2 and "--engine ustack needs --ifname" in bad.stderr
    bad = serve("--engine", "ustack", "--ifname", "nosuchnic0", "--ip", "10.0.0.101/24", "--bind", "10.0.0.1")
    assert bad.returncode == 2 and "--bind 10.0.0.1: --engine ustack listens on the stack's own address" in bad.stderr
    bad = serve("--engine", "ustack", "--ifname", "nosuchnic0", "--ip", "10.0.0.101")
    assert bad.returncode == 3 and "--ip '10.0.0.101': an address with a prefix length" in bad.stderr
    bad = serve("--engine", "ustack", "--ifname", "nosuchnic0", "--ip", "10.0.0.101/24")
    assert bad.returncode == 3 and "nosuchnic0" in bad.stderr
    bad = serve("--engine", "ustack", "--ifname", "nosuchnic0", "--ip", "10.0.0.101/24", "--workers", "2")
    assert bad.returncode == 2 and "--workers 2" in bad.stderr
