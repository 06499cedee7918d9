"""What a vagrant cleanup takes for live, and so keeps: a lab coming up (its `up` runs), and a
lab whose state says up and one of whose guests runs; a lab whose state says up but none of
whose guests runs (killed outright, or the machine restarted) is a leftover. No VM: a stand-in
process carries a QEMU guest's name, as libvirt's QEMU does (`-name guest=...`)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hpnlab import state
from hpnlab.providers.vagrant import VagrantProvider
from hpnlab.vm import lab_prefix


@pytest.fixture
def labs(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "LIVE_DIR", tmp_path / "run" / "labs")
    monkeypatch.setenv("HPNLAB_STATE_DIR", str(tmp_path / "state"))
    ended = subprocess.Popen(["true"])
    ended.wait()
    # `runs` and `killed`: up, by an `up` that has ended (as every `up` does once the lab is up);
    # `coming`: not up yet, its `up` (this process) still running
    for name, phase, pid in (("runs", "up", ended.pid), ("killed", "up", ended.pid), ("coming", None, os.getpid())):
        st = state.LabState(name)
        st.dir.mkdir(parents=True)
        st.write({"provider": "vagrant", "phase": phase})
        state.LIVE_DIR.mkdir(parents=True, exist_ok=True)
        (state.LIVE_DIR / f"vagrant.{name}").write_text(json.dumps({"state": str(st.path), "pid": pid}))
    guest = subprocess.Popen(["qemu-system-x86_64", "-c", "import time; time.sleep(60)",
                              "-name", f"guest={lab_prefix('runs')}h1,debug-threads=on"], executable=sys.executable)
    try:
        yield
    finally:
        guest.kill()
        guest.wait()


def test_cleanup_keeps_a_lab_coming_up_or_whose_guests_run_and_takes_one_whose_guests_do_not(labs):
    said: list[str] = []
    live, states = VagrantProvider._leftovers(None, said.append)
    assert live == {"runs", "coming"}, said
    assert [st.dir.name for st in states] == ["killed"]
    assert "lab killed: its state says up, but nothing of it runs (killed, or the machine restarted): " \
           "a leftover" in said and "lab runs is live (up or coming up): kept" in said
    # named with --only, a lab goes whatever its state (the user asked for it)
    live, states = VagrantProvider._leftovers("runs", said.append)
    assert live == set() and [st.dir.name for st in states] == ["runs"]


def test_cleanup_of_lab_a_spares_the_files_of_lab_a_b(tmp_path, monkeypatch):
    """Lab `a`'s prefix (hpnlab-a-) begins lab `a-b`'s names too: `cleanup --only a` takes `a`'s
    kernel copies and console logs and none of `a-b`'s (its guests would not boot again
    without their kernel); a whole cleanup takes every lab's but a live one's."""
    from hpnlab import vm
    from hpnlab.providers import vagrant
    monkeypatch.setattr(vm, "BOOT_DIR", tmp_path / "boot")
    monkeypatch.setattr(vagrant, "CONSOLE_DIR", tmp_path / "console")
    files = {}
    for lab in ("a", "a-b"):
        p = lab_prefix(lab)
        files[lab] = {vm.BOOT_DIR / f"{p}vmlinuz", vm.BOOT_DIR / f"{p}initrd.img", vagrant.CONSOLE_DIR / f"{p}h1.log"}
        for path in files[lab]:
            path.parent.mkdir(exist_ok=True)
            path.write_text(lab)
    assert set(vagrant._dead_labs_files("a", ())) == files["a"]
    assert set(vagrant._dead_labs_files("a-b", ())) == files["a-b"]
    assert set(vagrant._dead_labs_files(None, (lab_prefix("a-b"),))) == files["a"]
    assert set(vagrant._dead_labs_files(None, ())) == files["a"] | files["a-b"]
