"""The rudp lab's C ikcp and QUIC on hosts that reach no package index: the labcode role copies
labcode.VENDOR (kcp, aioquic and what they require) from the controller into <prefix>/vendor,
and the lab's agents put it on their path with use_vendor(). Here the layout the role makes
is built in a temporary prefix and imported by Debian's own python3 (the guests' interpreter)
with no site-packages at all: only the copied hpnlab and the vendor directory."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

from hpnlab import labcode

GUEST_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


def _role_layout(tmp: Path) -> Path:
    """<prefix>/lib (hpnlab), <prefix>/FINGERPRINT, <prefix>/vendor - as copy.yml unpacks them."""
    prefix = tmp / "opt-hpnlab"
    packed = labcode.pack(tmp / "packs")
    zipfile.ZipFile(packed["zip"]).extractall(prefix / "lib")
    (prefix / labcode.FINGERPRINT).write_text(packed["fingerprint"] + "\n")
    vendor = labcode.pack_vendor(tmp / "packs")
    zipfile.ZipFile(vendor["vendor_zip"]).extractall(prefix / "vendor")
    return prefix


def test_the_vendor_zip_lets_a_bare_python_run_ckcp_and_quic(tmp_path):
    prefix = _role_layout(tmp_path)
    code = f"""
import json, sys
sys.path.insert(0, {str(prefix / 'lib')!r})
from hpnlab.labcode import use_vendor
where = use_vendor()
from hpnlab.rudp.ckcp import CKcp
from hpnlab.rudp.arq import MODES
from hpnlab.rudp.quic import Quic
import kcp, aioquic, cryptography
a, b = CKcp(1, MODES["fast"]), CKcp(1, MODES["fast"])
a.send(b"hello"); a.update(0)
for d in a.pop_output():
    b.input(d, 0)
Quic(client=True)
print(json.dumps({{"vendor": str(where), "got": b.recv().decode(),
                  "from": [m.__file__ for m in (kcp, aioquic, cryptography)]}}))
"""
    proc = subprocess.run([GUEST_PYTHON, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["vendor"] == str(prefix / "vendor") and out["got"] == "hello"
    assert all(f.startswith(str(prefix / "vendor")) for f in out["from"]), out["from"]


def test_without_the_roles_copy_use_vendor_changes_nothing():
    before = list(sys.path)
    assert labcode.use_vendor() is None          # the checkout's package: no prefix, no vendor
    assert sys.path == before


def test_a_vendor_package_the_controller_lacks_is_named(tmp_path):
    import pytest
    with pytest.raises(RuntimeError, match="no-such-dist-hpnlab is not installed"):
        labcode.pack_vendor(tmp_path, ("kcp", "no-such-dist-hpnlab"))
    assert not list(tmp_path.glob("vendor-*"))
