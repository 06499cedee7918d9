"""`hpnlab verify`'s checks can fail: what must listen on a host (verify's own listener,
services a lab declares) is read back with ss, on a real netns lab."""
from __future__ import annotations

import pytest

from hpnlab.verify import verify

pytestmark = pytest.mark.integration
TWO_HOSTS = """
hosts: {h1: {}, h2: {}}
networks:
  data: {hosts: [h1, h2]}
"""


def test_services_listen_names_what_does_not(lab_factory, tmp_path):
    lab = lab_factory(TWO_HOSTS)
    report = verify(lab, tmp_path / "inventory", services=[{"host": "h1", "port": 9, "proto": "tcp",
                                                            "name": "nothing-here"}])
    listening = {c.host: c for c in report.checks if c.check.startswith("listening:")}
    assert set(listening) == {"h1", "h2"}, [c.__dict__ for c in report.checks]
    assert listening["h2"].status == "passed", listening["h2"]          # verify's own listener
    assert "hpnlab verify listener tcp/" in listening["h2"].check
    assert listening["h1"].status == "failed", listening["h1"]
    assert "nothing listens for nothing-here (tcp/9)" in listening["h1"].message
