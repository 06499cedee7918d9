"""Lab close on real namespaces: active/passive close, simultaneous close
through CLOSING, RST on close with unread data, TIME_WAIT vs SO_REUSEADDR;
and Ctrl-C leaves nothing behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpnlab.cli import build_parser
from hpnlab.labs import lab_module
from hpnlab.labs._kit import TRACEFS, StateTrace
from hpnlab.providers.netns import netns_pids
from hpnlab.testing import write_lab_file

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def close_run(netns_lab, tmp_path_factory):
    args = build_parser(["lab"]).parse_args(["lab", "--results", str(tmp_path_factory.mktemp("close")), "close",
                                             "--delay-ms", "50"])
    return lab_module("close").run(netns_lab, args, lambda m: None)


def test_close_scenarios(netns_lab, close_run):
    res = close_run
    sc = res["scenarios"]
    n, sim = sc["normal"], sc["simultaneous"]
    # who holds TIME_WAIT: only the active closer, or both after a simultaneous close; none after RST
    assert n["time_wait_after"] == {"client": 1, "server": 0}
    assert sim["time_wait_after"] == {"client": 1, "server": 1}, sim
    assert sc["rst"]["time_wait_after"] == {"client": 0, "server": 0}
    assert "CLOSE-WAIT" in n["ss_server"] or "CLOSE_WAIT" in (n.get("trace_server") or [])
    assert sc["rst"]["rst"] >= 1 and any("RST" in s for s in sc["rst"]["segments"])
    assert "late line" in sc["halfclose"]["client"]["received_after_shutdown"]
    ts_on, ts_off = res["tw"]
    assert ts_on["bind_without_reuseaddr"] == "EADDRINUSE" and ts_on["bind_with_reuseaddr"] == "ok"
    assert ts_off["connect_same_4tuple_at_0.1s"] == "EADDRNOTAVAIL"
    # knobs back, no delay line or rule left
    for h in ("h1", "h2"):
        host = netns_lab.host(h)
        assert "NFQUEUE" not in host.run(["iptables-nft", "-t", "mangle", "-S"]).stdout
        assert host.sysctl("net.ipv4.tcp_timestamps") == "1"


def test_close_states_from_the_tracepoint(netns_lab, close_run):
    if not StateTrace.available(netns_lab):
        pytest.skip(f"no writable {TRACEFS} with sock:inet_sock_set_state here: the state trace cannot be read")
    sc = close_run["scenarios"]
    n, sim = sc["normal"], sc["simultaneous"]
    for side in ("trace_client", "trace_server"):
        path = sim[side]
        assert path and "CLOSING" in path and "FIN_WAIT2" not in path, (side, path)
    assert "FIN_WAIT2" in n["trace_client"] and "CLOSE_WAIT" in n["trace_server"]


def test_ctrl_c_leaves_nothing(netns_lab, tmp_path):
    """SIGINT to `hpnlab lab close` mid-run (its agents are running on h1): it stops with
    status 130, and every agent, rule and trace instance goes."""
    lab_file = write_lab_file(tmp_path / "lab.yml", netns_lab.lab.name)
    env = dict(os.environ, HPNLAB_STATE_DIR=str(netns_lab.state.dir.parent))
    ns = f"{netns_lab.lab.name}-h1"
    assert netns_pids(ns) == []
    # SIGINT as a terminal sends it: a run started in the background (`cmd &` without job
    # control) inherits SIGINT ignored, and the lab would never see the interrupt
    proc = subprocess.Popen([str(Path(sys.executable).parent / "hpnlab"), "--lab", str(lab_file), "lab", "--results",
                             str(tmp_path / "r"), "close"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 30        # an agent on h1 (not one of the short `ss` runs)
    while not _agents(ns) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None and _agents(ns), "the lab never started an agent on h1"
    time.sleep(0.5)                 # well inside the run (it takes ~20 s)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "hpnlab: interrupted" in out and "Traceback" not in out, out
    time.sleep(0.5)
    for h in ("h1", "h2"):
        ns = f"{netns_lab.lab.name}-{h}"
        left = netns_pids(ns)
        assert left == [], (h, [_cmdline(p) for p in left], out[-2000:])
        host = netns_lab.host(h)
        assert "NFQUEUE" not in host.run(["iptables-nft", "-t", "mangle", "-S"]).stdout
    if StateTrace.available():
        assert not [p for p in (TRACEFS / "instances").iterdir() if p.name.startswith(f"hpnlab-{proc.pid}-")]


def _agents(ns: str) -> list[int]:
    return [pid for pid in netns_pids(ns) if "hpnlab.labs.close" in _cmdline(pid)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "?"
