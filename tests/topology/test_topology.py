"""lab.yml parsing: the default lab, auto-assignment, and every invalid case.

Each file in invalid/ starts with `# expect: <text>`; loading it must raise a
TopologyError containing that text (file:line: field: message), and `hpnlab up`
on it must fail with exit status 2 and create nothing.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hpnlab.topology import TopologyError, load_lab, parse_lab

HERE = Path(__file__).parent
REPO = HERE.parents[1]
INVALID = sorted((HERE / "invalid").glob("*.yml"))


def expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} lacks its '# expect:' line"
    return first.removeprefix("# expect: ")


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_topology_names_field_and_line(path):
    with pytest.raises(TopologyError) as err:
        load_lab(path)
    assert expected(path) in str(err.value)


def _netns(lab: str) -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith((f"{lab}-", f"{lab}."))}


@pytest.mark.integration
@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_topology_creates_nothing(path, tmp_path):
    name = "bad" if "name: bad" in path.read_text() else "hpnlab"
    before = _netns(name)
    proc = subprocess.run([sys.executable, "-m", "hpnlab.cli", "--lab", str(path), "up"],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HPNLAB_STATE_DIR": str(tmp_path / "st")})
    assert proc.returncode == 2, proc.stderr
    assert expected(path) in proc.stderr
    assert _netns(name) == before
    assert not (tmp_path / "st").exists()


def test_default_lab():
    lab = load_lab(REPO / "lab.yml")
    assert lab.name == "hpnlab" and set(lab.hosts) == {"h1", "h2"}
    h1 = lab.hosts["h1"]
    assert h1.nic("data").ifname == "eth1"
    assert str(h1.nic("data").address) == "10.77.1.1/24"
    assert h1.sysctls["net.core.somaxconn"] == "4096"
    assert h1.dpdk_nic.ifname == "eth2" and h1.dpdk_nic.network == "dpdk"
    assert lab.provider == "vagrant"                # `make lab-up` brings up VMs
    assert "net.core.rmem_max" in lab.machine_sysctls


def test_auto_assignment_and_macs_are_stable():
    text = """
name: auto
hosts: {a: {}, b: {}, c: {}}
networks:
  lan1: {hosts: [a, b, c]}
  ab:
    type: link
    hosts: {a: null, b: 10.77.9.9}
    subnet: 10.77.9.0/24
  bc: {type: link, hosts: [b, c]}
"""
    lab = parse_lab(text)
    assert str(lab.networks["lan1"].subnet) == "10.77.0.0/24"      # first free /24 of the pool
    assert str(lab.networks["bc"].subnet) == "10.77.1.0/24"
    assert [str(n.ip) for n in lab.nics_on("lan1")] == ["10.77.0.1", "10.77.0.2", "10.77.0.3"]
    assert str(lab.hosts["a"].nic("ab").ip) == "10.77.9.1"          # skips b's explicit .9? no: first free
    assert str(lab.hosts["b"].nic("ab").ip) == "10.77.9.9"
    assert [n.ifname for n in lab.hosts["b"].nics] == ["eth1", "eth2", "eth3"]
    assert parse_lab(text).hosts["a"].nics[0].mac == lab.hosts["a"].nics[0].mac
    assert len({n.mac for h in lab.hosts.values() for n in h.nics}) == 7


def test_impairment_units():
    lab = parse_lab("""
hosts: {a: {}, b: {}}
networks:
  w: {type: link, hosts: [a, b], impair: {delay: 1.5ms, jitter: 500us, loss: 2%, rate: 100mbit}}
""")
    imp = lab.networks["w"].impair
    assert (imp.delay_ms, imp.jitter_ms, imp.loss_pct, imp.rate_bps) == (1.5, 0.5, 2.0, 100_000_000)
    assert imp.describe() == "delay 1.5ms±0.5ms, loss 2%, rate 100mbit"


def test_errors_of_the_first_failing_stage_are_all_reported_at_once():
    def problems(text: str) -> list[str]:
        with pytest.raises(TopologyError) as err:
            parse_lab(text, provider="netns")
        return [p.split(": ", 1)[1] for p in err.value.problems]

    hosts = "hosts: {h1: {sysctls: {net.core.rmem_max: 1}}, h2: {}}\n"
    # schema: both of h1's bad values; the unknown host of the next stage is not looked at yet
    assert problems("hosts: {h1: {hugepages: -1, cpus: 0}}\nnetworks: {d: {hosts: [h1, zz]}}\n") == [
        "hosts.h1.cpus: must be ≥ 1, got 0", "hosts.h1.hugepages: must be ≥ 0, got -1"]
    # references: every name that names nothing
    assert problems(hosts + "networks: {d: {hosts: [h1, zz]}, e: {hosts: [yy]}}\n") == [
        "networks.d.hosts.zz: unknown host 'zz' (hosts: 'h1', 'h2')",
        "networks.e.hosts.yy: unknown host 'yy' (hosts: 'h1', 'h2')", "networks.e.hosts: a LAN needs at least one host"]
    # addressing, then the provider's own checks (this machine's kernel for netns)
    assert problems(hosts + "networks: {d: {subnet: 10.0.0.0/30, hosts: [h1, h2]}, "
                            "e: {subnet: 10.0.0.0/24, hosts: {h1: 10.9.9.9}}}\n") == [
        "networks.e.subnet: 10.0.0.0/24 overlaps 10.0.0.0/30 of network d",
        "networks.e.hosts.h1: address 10.9.9.9 is not a host address of 10.0.0.0/24"]
    assert problems(hosts + "networks: {d: {hosts: [h1, h2]}}\n") == [
        "hosts.h1.sysctls.net.core.rmem_max: is machine-wide, not per network namespace: put it under machine.sysctls"]


def test_sysctls_are_judged_by_the_provider_whose_kernel_applies_them():
    text = "hosts: {h1: {sysctls: {net.core.rmem_max: 1}}, h2: {}}\nnetworks: {d: {hosts: [h1, h2]}}\n"
    with pytest.raises(TopologyError, match="machine-wide, not per network namespace"):
        parse_lab(text, provider="netns")          # namespaces share this machine's kernel
    assert parse_lab(text, provider="vagrant").hosts["h1"].sysctls == {"net.core.rmem_max": "1"}   # a VM's own
    unknown = text.replace("net.core.rmem_max", "net.core.no_such_key")
    # the box kernel's list once a VM up recorded it (CI boots VMs first), else this one's
    with pytest.raises(TopologyError, match="no such sysctl on (this|the box's) kernel"):
        parse_lab(unknown, provider="vagrant")
    assert parse_lab(unknown, provider="static").name     # a real machine's kernel is asked at `up`


def test_real_links_are_not_impaired():
    text = "hosts: {h1: {}, h2: {}}\nnetworks:\n  wan: {type: link, hosts: [h1, h2], impair: {delay: 5ms}}\n"
    assert parse_lab(text, provider="netns").networks["wan"].impair.delay_ms == 5.0
    with pytest.raises(TopologyError, match="3: networks.wan.impair: the static provider leaves real links"):
        parse_lab(text, provider="static")


def test_a_lab_file_that_is_not_utf8_names_line_and_byte(tmp_path):
    path = tmp_path / "lab.yml"
    path.write_bytes(b"name: x\nhosts:\n  h\xe9: {}\n")
    with pytest.raises(TopologyError) as err:
        load_lab(path)
    assert f"{path}:3: column 4: byte 0xe9 is not UTF-8" in str(err.value)
    assert err.value.hint == "save the lab file as UTF-8" and err.value.exit_code == 2


def test_the_vm_block_is_the_vagrant_providers_to_judge():
    text = "vm: {driver: warp, tb_size_mb: 2, management_subnet: 10.1.0.0/16}\nhosts: {h1: {}}\n"
    assert parse_lab(text, provider="netns").vm["driver"] == "warp"          # no VM: nobody reads it
    with pytest.raises(TopologyError) as err:
        parse_lab(text, provider="vagrant")
    assert [p.split(": ", 1)[1] for p in err.value.problems] == [
        "vm.driver: must be one of auto, kvm, qemu, got 'warp'", "vm.tb_size_mb: MiB, must be 8..4096, got 2"]
    lab = parse_lab(text.replace("warp", "qemu").replace(" 2,", " 16,"), provider="vagrant")
    from hpnlab import vm
    assert vm.settings(lab)["management_subnet"] == "10.1.0.0/16" and vm.settings(lab)["iommu"] is False


def test_yaml_aliases_that_expand_to_10_to_the_12_values_are_refused_quickly(monkeypatch):
    """A 'billion laughs' lab file: levels of lists of ten aliases. Messages quote values
    bounded, never through a full repr() of the tree (reprlib fell back to one for the
    loader's LineList: 1 GB and minutes at 10**8 values)."""
    from hpnlab.topology import yamlsource

    full_reprs = []
    monkeypatch.setattr(yamlsource.LineList, "__repr__", lambda self: full_reprs.append(len(self)) or "[...]")
    lines = ["networks:", '  n0: {hosts: &l0 ["h1", "h1", "h1", "h1", "h1", "h1", "h1", "h1", "h1", "h1"]}']
    lines += [f"  n{i}: {{hosts: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]}}" for i in range(1, 12)]
    with pytest.raises(TopologyError) as err:
        parse_lab("hosts: {h1: {}}\n" + "\n".join(lines) + "\n", "t.yml")
    assert len(str(err.value)) < 1_000_000 and "t.yml:13: networks.n11.hosts." in str(err.value)
    assert not full_reprs, "a message built the full repr() of a YAML list"
