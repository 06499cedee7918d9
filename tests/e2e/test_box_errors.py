"""The box build's bad input: no Debian mirror to reach. The error says what to do, and the
cache keeps nothing half-built (only the build log it points to)."""
from __future__ import annotations

import os

import pytest

from hpnlab.vm import VmError
from hpnlab.vm import box as vmbox
from hpnlab.vm import setup as vmsetup

pytestmark = [pytest.mark.vm]


def test_box_build_without_a_mirror_fails_clearly_and_leaves_nothing(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("building the box needs root (mmdebstrap --mode=root)")
    if os.environ.get("HPNLAB_SKIP_VM") == "1":
        pytest.skip("HPNLAB_SKIP_VM=1")
    vmsetup.ensure_packages(print)                  # mmdebstrap and friends, as `make lab-up` does
    cache = tmp_path / "box"
    monkeypatch.setattr(vmbox, "CACHE", cache)
    # a mirror on loopback that nothing serves: apt fails at once, nothing leaves the machine
    monkeypatch.setenv("HPNLAB_DEBIAN_MIRROR", "http://127.0.0.1:9/debian")
    monkeypatch.setenv("HPNLAB_DEB_CACHE", str(tmp_path / "debs"))
    with pytest.raises(VmError) as err:
        vmbox.build(print, force=True)
    message = str(err.value)
    assert "box build failed" in message and "could not reach the Debian mirror" in message, message
    assert "HPNLAB_DEBIAN_MIRROR" in message and "make box" in message
    left = sorted(p.name for p in cache.iterdir())
    assert left == [f"build-{vmbox.recipe_hash()}.log"], left


def test_up_whose_box_build_fails_leaves_nothing(tmp_path, monkeypatch):
    """`hpnlab up` of a VM lab whose box cannot be built: a ProviderError that says what to
    do, no libvirt object of the lab, no live-lab entry, no daemon this run started."""
    if os.geteuid() != 0:
        pytest.skip("VM labs need root")
    if os.environ.get("HPNLAB_SKIP_VM") == "1":
        pytest.skip("HPNLAB_SKIP_VM=1")
    from hpnlab.providers import ProviderError, open_lab
    from hpnlab.state import registered
    from hpnlab.testing import unique_lab_name, write_lab_file
    from hpnlab.vm import virt

    monkeypatch.setenv("HPNLAB_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(vmbox, "CACHE", tmp_path / "box")          # no cached box and none added:
    monkeypatch.setattr(vmbox, "added_recipe", lambda: None)        # it must be built
    monkeypatch.setenv("HPNLAB_DEBIAN_MIRROR", "http://127.0.0.1:9/debian")
    monkeypatch.setenv("HPNLAB_DEB_CACHE", str(tmp_path / "debs"))
    daemons_before = vmsetup._started()
    name = unique_lab_name("boxfail")
    provider = open_lab(write_lab_file(tmp_path / "lab.yml", name, provider="vagrant"))
    try:
        with pytest.raises(ProviderError) as err:
            provider.up(print)
    finally:
        if provider.is_up():                # it must not, but never leave VMs behind
            provider.down(print)
    message = str(err.value)
    assert "could not reach the Debian mirror" in message and f"nothing of lab {name} was created" in message
    assert name not in registered("vagrant")
    if virt.available():
        assert not virt.domains(provider.prefix) and not virt.networks(provider.prefix)
    if not daemons_before:                 # this run started libvirtd/virtlogd: it stopped them too
        assert not vmsetup._started(), vmsetup._started()
