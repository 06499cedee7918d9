"""Which known_hosts file a host's key is checked against, and that OpenSSH (the one Ansible
and `hpnlab shell` run) takes hpnlab's checking options over a user's own: `ssh -G` prints
the options a connection would use, without connecting."""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from hpnlab import inventory
from hpnlab.hosts.ssh import CONSOLE_RECORD, SshHost, bare_spec, reach_of
from hpnlab.providers import open_lab
from hpnlab.providers.vagrant import VagrantProvider
from hpnlab.topology import load_lab

REPO = Path(__file__).resolve().parents[2]


def _effective(ssh_args: str) -> dict[str, str]:
    out = subprocess.run(["ssh", "-G", *shlex.split(ssh_args), "root@192.0.2.1"], capture_output=True,
                         text=True, check=True).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


@pytest.mark.parametrize("given, file", [
    ({}, None),                                                                  # the user's and the system's
    ({"hpnlab_known_hosts": "~/lab/known_hosts"}, str(Path("~/lab/known_hosts").expanduser())),
    ({"ansible_ssh_common_args": "-o UserKnownHostsFile=/srv/kh -o ProxyJump=jump"}, "/srv/kh"),
])
def test_static_hosts_are_checked_against_one_file_whatever_the_user_says(tmp_path, monkeypatch, given, file):
    static = tmp_path / "static.yml"
    user_args = given.get("ansible_ssh_common_args", "") + " -o StrictHostKeyChecking=no"
    hosts = {h: {"ansible_host": f"192.0.2.{i}", **given, "ansible_ssh_common_args": user_args}
             for i, h in enumerate(("h1", "h2"), start=1)}
    static.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    lab = load_lab(REPO / "lab.yml", provider="static", name="khtest")
    hv = inventory.read(inventory.write(open_lab(lab), directory=tmp_path, static_inventory=static))["h1"]
    reach = reach_of(hv)
    assert reach["known_hosts"] == file and reach["recorded_by"] is None
    ssh = _effective(hv["ansible_ssh_common_args"])
    assert ssh["stricthostkeychecking"] == "true", hv["ansible_ssh_common_args"]     # not the user's "no"
    if file:
        assert ssh["userknownhostsfile"] == file and ssh["globalknownhostsfile"] == "/dev/null"
    else:
        assert "known_hosts" in ssh["userknownhostsfile"]
    host = SshHost.from_reach(bare_spec("h1"), reach)
    accept = shlex.split(host.accept_command())
    assert accept[:3] == ["ssh", "-o", "StrictHostKeyChecking=accept-new"] and accept[-2:] == ["root@192.0.2.1", "true"]
    assert f"UserKnownHostsFile={file or Path('~/.ssh/known_hosts').expanduser()}" in accept


def test_vm_hosts_are_checked_against_the_recorded_keys_only(tmp_path):
    lab = load_lab(REPO / "lab.yml", provider="vagrant", name="khvm")
    provider = VagrantProvider(lab, tmp_path)
    provider.state.dir.mkdir(parents=True)
    provider.state.write({"hosts": {h: {"address": f"192.168.100.{i}"} for i, h in enumerate(("h1", "h2"), 1)}})
    hv = inventory.read(inventory.write(provider, directory=tmp_path))["h2"]
    ssh = _effective(hv["ansible_ssh_common_args"])
    assert ssh["stricthostkeychecking"] == "true"
    known = str(provider.known_hosts_path)
    assert ssh["userknownhostsfile"] == known and ssh["globalknownhostsfile"] == "/dev/null"
    reach = reach_of(hv)
    assert reach["known_hosts"] == known and reach["recorded_by"] == CONSOLE_RECORD


def test_a_proxy_command_that_ends_fails_the_connection_at_once_saying_why():
    """A machine behind a jump host that does not answer (the jump's `nc` is refused and exits):
    the command's end is the connection's, reported with what the command said (paramiko's
    own ProxyCommand read the ended pipe until the 15 s connect timeout, "No existing session")."""
    # (it ends after the client's first write: one that ended before had its end found by that write)
    proxy = "sh -c 'sleep 0.3; echo nc: connect to 127.0.0.1 port 2222 failed >&2; exit 1'"
    host = SshHost(bare_spec("h2"), "192.0.2.2", proxy_command=proxy)
    r = host.run("true", timeout=30, check=False)
    assert r.rc == 255 and r.stderr.endswith(": nc: connect to 127.0.0.1 port 2222 failed"), r
    assert r.seconds < 5, r
