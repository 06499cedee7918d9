"""`hpnlab ustack serve`: bad input is refused naming the argument, before any frame is sent."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HPNLAB = str(Path(sys.executable).parent / "hpnlab")


@pytest.mark.parametrize("args, says", [
    (["--ifname", "nonexist0", "--ip", "10.0.0.1"], "--ip '10.0.0.1': an address with a prefix length"),
    (["--ifname", "nonexist0", "--ip", "10.0.0.1/24", "--mac", "zz"], "--mac: MAC address 'zz'"),
    (["--ifname", "nonexist0", "--ip", "10.0.0.1/24", "--impair", "loss=x"], "--impair: 'loss=x'"),
    (["--ifname", "nonexist0", "--ip", "10.0.0.1/24", "--impair", "drop=1"], "--impair: 'drop' is not one of"),
    (["--driver", "afpacket-v3", "--offload", "--ifname", "nonexist0", "--ip", "10.0.0.1/24"],
     "needs the TPACKET_V2 ring"),
    (["--ifname", "nonexist0", "--ip", "10.0.0.1/24"], "--ifname nonexist0: "),
    (["--ifname", "nonexist0", "--ip", "10.0.0.1/24", "--app", "reactor", "--protocol", "nope"],
     "--protocol: invalid choice: 'nope'"),
])
def test_serve_refuses_bad_input(args, says):
    res = subprocess.run([HPNLAB, "ustack", "serve", *args], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert says in res.stderr + res.stdout, res.stderr
    assert '"event": "ready"' not in res.stdout
