"""The vagrant provider without booting anything: what it renders for the
Vagrantfile, the per-lab key, the box recipe hash, names for cleanup, and the
Vagrantfile itself (`vagrant status`, where Vagrant is installed)."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hpnlab.providers.vagrant import VagrantProvider
from hpnlab.topology import parse_lab
from hpnlab.vm import box as vmbox
from hpnlab.vm import lab_prefix

REPO = Path(__file__).resolve().parents[2]

THREE_HOSTS = """
name: vtest
provider: vagrant
vm:
  driver: qemu
  tb_size_mb: 96
  iommu: true
  management_subnet: 192.168.201.0/24
hosts:
  a: {cpus: 2, memory: 768}
  b: {}
  c: {}
networks:
  front: {type: lan, subnet: 10.88.1.0/24, mtu: 9000, hosts: {a: 10.88.1.10, b: 10.88.1.20, c: 10.88.1.30}}
  back:  {type: link, subnet: 10.88.2.0/30, hosts: {a: 10.88.2.1, c: 10.88.2.2}}
"""


@pytest.fixture
def provider(tmp_path):
    lab = parse_lab(THREE_HOSTS)
    return VagrantProvider(lab, state_root=tmp_path)


def test_render_carries_the_model_and_resolved_settings(provider):
    doc = json.loads(provider.render().read_text())
    assert set(doc["hosts"]) == {"a", "b", "c"}
    a = doc["hosts"]["a"]
    assert (a["cpus"], a["memory_mb"]) == (2, 768)
    assert [(n["ifname"], n["network"], n["address"], n["mtu"]) for n in a["nics"]] == [
        ("eth1", "front", "10.88.1.10/24", 9000), ("eth2", "back", "10.88.2.1/30", 1500)]
    assert a["nics"][0]["mac"] == provider.lab.hosts["a"].nic("front").mac
    vm = doc["vagrant"]
    assert vm["prefix"] == "hpnlab-vtest-" == lab_prefix("vtest")
    assert (vm["driver"], vm["tb_size_mb"], vm["iommu"], vm["nat"]) == ("qemu", 96, True, False)
    assert vm["management_subnet"] == "192.168.201.0/24"
    assert vm["ssh_pubkey"].startswith("ssh-ed25519 ")


def test_lab_key_is_private_and_kept(provider):
    provider.render()
    key = provider.key_path
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    first = key.read_bytes()
    provider.render()
    assert key.read_bytes() == first
    assert b"OPENSSH PRIVATE KEY" in first


def test_expected_names_all_share_the_lab_prefix(provider):
    names = provider.expected()
    assert names["domains"] == ["hpnlab-vtest-a", "hpnlab-vtest-b", "hpnlab-vtest-c"]
    assert "hpnlab-vtest-mgmt" in names["networks"] and "hpnlab-vtest-back" in names["networks"]
    assert all(n.startswith("hpnlab-vtest-") for group in names.values() for n in group)


def test_auto_management_subnet_is_stable_and_private(tmp_path):
    lab = parse_lab(THREE_HOSTS.replace("  management_subnet: 192.168.201.0/24\n", ""))
    p1 = VagrantProvider(lab, state_root=tmp_path / "1")
    p2 = VagrantProvider(lab, state_root=tmp_path / "2")
    s1 = p1._management_subnet(p1.settings())
    assert s1 == p2._management_subnet(p2.settings())
    assert s1.startswith("192.168.") and s1.endswith(".0/24")


def test_recipe_hash_follows_the_image_recipe_only(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    shutil.copytree(REPO / "box", root / "box")
    (root / "Vagrantfile").write_text("# test\n")
    monkeypatch.setenv("HPNLAB_ROOT", str(root))
    before = vmbox.recipe_hash()
    (root / "box" / "provision.sh").write_text("# provisioning is not part of the image\n")
    assert vmbox.recipe_hash() == before
    with open(root / "box" / "packages.txt", "a") as f:
        f.write("less\n")
    assert vmbox.recipe_hash() != before


def test_vagrantfile_loads_the_rendered_lab(provider, tmp_path):
    # Asked when the test runs, not at collection: in a first `make test` on a fresh machine
    # the VM tests (tests/e2e, collected and run before this file) install Vagrant.
    if shutil.which("vagrant") is None or os.geteuid() != 0:
        pytest.skip("needs vagrant and root (the VM tests in tests/e2e install vagrant)")
    spec = provider.render()
    from hpnlab.vm.box import lab_vagrant_home
    # the lab's own Vagrant home (as `up` uses): other labs' machines in Vagrant's
    # global index (same Vagrantfile) must not matter
    env = dict(os.environ, HPNLAB_VAGRANT_JSON=str(spec), VAGRANT_DOTFILE_PATH=str(tmp_path / "dot"),
               VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_DEFAULT_PROVIDER="libvirt",
               VAGRANT_HOME=str(lab_vagrant_home(tmp_path / "vagrant.d")))
    r = subprocess.run(["vagrant", "validate"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(["vagrant", "status"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert all(f"{h} " in r.stdout for h in ("a", "b", "c")), r.stdout + r.stderr


def test_render_leaves_no_boot_files(provider, tmp_path, monkeypatch):
    """Rendering (also what a bare `vagrant` command does) copies no kernel: only `up` does,
    and `down`/`cleanup` remove what it copied."""
    from hpnlab import vm
    monkeypatch.setattr(vm, "BOOT_DIR", tmp_path / "boot")
    doc = json.loads(provider.render().read_text())
    assert "kernel" not in doc["vagrant"] and not (tmp_path / "boot").exists()


def test_lab_sysctls_are_checked_against_the_box_kernels_own_names(tmp_path, monkeypatch):
    from hpnlab.topology import TopologyError
    monkeypatch.setattr(vmbox, "CACHE", tmp_path)
    text = "provider: vagrant\nhosts: {h1: {sysctls: {net.core.somaxconn: 1, net.ipv4.conf.eth1.rp_filter: 0}}}\n" \
           "networks: {d: {hosts: [h1]}}\n"
    assert parse_lab(text).hosts["h1"].sysctls          # no box recorded yet: this machine's kernel stands in
    vmbox.cached().mkdir(parents=True)
    vmbox.record_sysctl_names("net.core.somaxconn\nnet.ipv4.conf.default.rp_filter\nnet.ipv4.conf.eth0.rp_filter\n")
    vmbox.record_sysctl_names("kernel.only_once\n")     # one box, one kernel: the first record stays
    assert vmbox.sysctl_names() == {"net.core.somaxconn", "net.ipv4.conf.default.rp_filter",
                                    "net.ipv4.conf.eth0.rp_filter"}
    assert parse_lab(text).hosts["h1"].sysctls["net.ipv4.conf.eth1.rp_filter"] == "0"   # as `default`
    with pytest.raises(TopologyError, match="net.ipv4.tcp_fastopen: no such sysctl on the box's kernel"):
        parse_lab(text.replace("net.core.somaxconn", "net.ipv4.tcp_fastopen"))
    # another box: this machine's kernel again
    other = text.replace("provider: vagrant\n", "provider: vagrant\nvm: {box: debian/bookworm64}\n")
    assert parse_lab(other.replace("net.core.somaxconn", "net.ipv4.tcp_fastopen")).name


def test_down_removes_the_nft_tables_a_killed_lab_run_left(tmp_path):
    """Only the lab's own hpnlab_<what>_<lab> tables go (in a network namespace of the
    test's own, so this machine's tables are never touched)."""
    if os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("unshare"):
        pytest.skip("needs root, nft and unshare")
    script = """
import json, subprocess, sys
from hpnlab.providers.vagrant import remove_lab_nft_tables
for family, name in [("bridge", "hpnlab_pktgen_my_lab"), ("inet", "hpnlab_impair_my_lab"),
                     ("bridge", "hpnlab_pktgen_other"), ("bridge", "hpnlab_pktgen_x_my_lab"), ("ip", "filter")]:
    subprocess.run(["nft", "add", "table", family, name], check=True)
removed = remove_lab_nft_tables("my-lab")
left = sorted(t["table"]["name"] for t in json.loads(subprocess.run(["nft", "-j", "list", "tables"],
              capture_output=True, text=True, check=True).stdout)["nftables"] if "table" in t)
print(json.dumps({"removed": sorted(removed), "left": left}))
"""
    proc = subprocess.run(["unshare", "--net", sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["removed"] == ["bridge hpnlab_pktgen_my_lab", "inet hpnlab_impair_my_lab"]
    assert out["left"] == ["filter", "hpnlab_pktgen_other", "hpnlab_pktgen_x_my_lab"]


def test_a_labs_prefix_owns_its_own_names_and_not_a_longer_labs():
    from hpnlab.vm import PREFIX, lab_prefix, owns
    a = lab_prefix("a")
    assert all(owns(a, n) for n in ("hpnlab-a-h1", "hpnlab-a-mgmt", "hpnlab-a-h1.img", "hpnlab-a-vmlinuz",
                                    "hpnlab-a-initrd.img", "hpnlab-a-h1.log"))
    assert not any(owns(a, n) for n in ("hpnlab-a-b-h1", "hpnlab-a-b-data", "hpnlab-a-b-h1.img", "hpnlab-ab-h1"))
    assert owns(lab_prefix("a-b"), "hpnlab-a-b-h1")
    assert owns(PREFIX, "hpnlab-a-b-h1") and owns("hpnlab-a-h1", "hpnlab-a-h1.img")   # all labs; one guest
