"""The generated Ansible inventory: groups by role, host vars from the topology, connection per provider."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hpnlab import inventory
from hpnlab.providers import ProviderError, open_lab
from hpnlab.providers.vagrant import VagrantProvider
from hpnlab.topology import load_lab

REPO = Path(__file__).resolve().parents[2]


def test_netns_inventory_groups_vars_and_connection(tmp_path):
    lab = load_lab(REPO / "lab.yml", provider="netns", name="invtest")
    path = inventory.write(open_lab(lab), directory=tmp_path)
    assert path == tmp_path / "invtest.yml"
    doc = yaml.safe_load(path.read_text())["all"]
    assert doc["children"]["server"]["hosts"] == {"h1": None}
    assert doc["children"]["client"]["hosts"] == {"h2": None}
    assert set(doc["children"]["provider_netns"]["hosts"]) == {"h1", "h2"}
    assert doc["vars"]["hpnlab_machine_sysctls"]["net.core.rmem_max"] == "16777216"
    h1 = doc["hosts"]["h1"]
    assert h1["ansible_connection"] == "hpnlab_netns" and h1["hpnlab_netns"] == "invtest-h1"
    assert h1["hpnlab_sysctls"]["net.core.somaxconn"] == "4096"
    assert h1["hpnlab_hugepages"] == 64 and h1["hpnlab_dpdk_ifname"] == "eth2"
    assert h1["hpnlab_nics"][0]["address"] == "10.77.1.1/24" and h1["hpnlab_nics"][0]["mtu"] == 1500
    # netns hosts keep DPDK's NIC (an af_packet vdev rides on it): peers over both LANs
    assert h1["hpnlab_peers"] == [{"host": "h2", "network": "data", "ip": "10.77.1.2", "via": "eth1"},
                                  {"host": "h2", "network": "dpdk", "ip": "10.77.2.2", "via": "eth2"}]
    assert [n["kernel"] for n in h1["hpnlab_nics"]] == [True, True]
    # rewriting an unchanged lab leaves the file alone
    mtime = path.stat().st_mtime_ns
    inventory.write(open_lab(lab), directory=tmp_path)
    assert path.stat().st_mtime_ns == mtime


def test_static_inventory_takes_connection_and_nic_names_from_the_user(tmp_path):
    static = tmp_path / "static.yml"
    static.write_text(yaml.safe_dump({"all": {"vars": {"ansible_user": "lab"}, "hosts": {
        "h1": {"ansible_host": "192.0.2.11", "hpnlab_ifnames": {"data": "enp3s0f0", "dpdk": "enp3s0f1"},
               "hpnlab_dpdk_pci": "0000:03:00.1"},
        "h2": {"ansible_host": "192.0.2.12", "ansible_become": True}}}}))
    lab = load_lab(REPO / "lab.yml", provider="static", name="st")
    hosts = inventory.build(open_lab(lab), static_inventory=static)["all"]["hosts"]
    assert hosts["h1"]["ansible_host"] == "192.0.2.11" and hosts["h1"]["ansible_user"] == "lab"
    assert [n["ifname"] for n in hosts["h1"]["hpnlab_nics"]] == ["enp3s0f0", "enp3s0f1"]
    assert hosts["h1"]["hpnlab_dpdk_ifname"] == "enp3s0f1" and hosts["h1"]["hpnlab_dpdk_pci"] == "0000:03:00.1"
    assert hosts["h2"]["ansible_become"] is True and hosts["h2"]["hpnlab_nics"][0]["ifname"] == "eth1"
    yaml.safe_dump(hosts)       # plain data: the generated inventory is written from it


def test_static_example_is_a_valid_static_inventory():
    hosts = inventory.load_static(REPO / "inventory" / "static.example.yml")
    assert {"h1", "h2"} <= set(hosts) and all("ansible_host" in v for v in hosts.values())


def test_static_host_missing_is_named(tmp_path):
    static = tmp_path / "static.yml"
    static.write_text(yaml.safe_dump({"all": {"hosts": {"h1": {"ansible_host": "192.0.2.11"}}}}))
    lab = load_lab(REPO / "lab.yml", provider="static", name="st")
    with pytest.raises(inventory.InventoryError, match="host h2: not in the static inventory"):
        inventory.build(open_lab(lab), static_inventory=static)


def test_vagrant_without_ssh_address_names_the_host(tmp_path):
    lab = load_lab(REPO / "lab.yml", provider="vagrant", name="vg")
    with pytest.raises(ProviderError, match="host h1: the vagrant provider has no SSH address"):
        inventory.build(VagrantProvider(lab, tmp_path))


def test_vagrant_connection_from_provider_state(tmp_path):
    lab = load_lab(REPO / "lab.yml", provider="vagrant", name="vg")
    provider = VagrantProvider(lab, tmp_path)
    provider.state.dir.mkdir(parents=True)
    provider.state.write({"hosts": {"h1": {"address": "192.168.121.11"}, "h2": {"address": "192.168.121.12"}}})
    hosts = inventory.build(provider)["all"]["hosts"]
    assert hosts["h2"]["ansible_host"] == "192.168.121.12" and hosts["h2"]["ansible_user"] == "root"
    assert hosts["h2"]["ansible_ssh_private_key_file"] == str(provider.key_path)
    assert hosts["h2"]["ansible_become"] is False and hosts["h2"]["ansible_connection"] == "ssh"
    # on VMs DPDK takes eth2 from the kernel: verify checks neither its address nor pings over it
    assert [(n["ifname"], n["kernel"]) for n in hosts["h1"]["hpnlab_nics"]] == [("eth1", True), ("eth2", False)]
    assert [p["network"] for p in hosts["h1"]["hpnlab_peers"]] == ["data"]


GOOD_H2 = "    h2: {ansible_host: 192.0.2.12}\n"


@pytest.mark.parametrize("text, where", [
    ("[1, 2]\n", ":1: the file: must be a mapping, not a list"),
    ("all: 5\n", ":1: all: must be a mapping, not the value 5"),
    ("all:\n  hosts: [h1, h2]\n", ":2: all.hosts: must be a mapping"),
    ("all:\n  hosts:\n    h1: 5\n", ":3: all.hosts.h1: must be a mapping"),
    ("all:\n  vars: [1]\n", ":2: all.vars: must be a mapping"),
    ("all:\n  children: {g: [a]}\n", ":2: all.children.g: must be a mapping"),
    ("all:\n  hosts:\n    h1: {ansible_host: 192.0.2.11, hpnlab_ifnames: {data: 'eth1; reboot'}}\n",
     ":3: all.hosts.h1.hpnlab_ifnames: data: 'eth1; reboot': a NIC name is"),
    ("all:\n  hosts:\n    h1: {ansible_host: 192.0.2.11, hpnlab_ifnames: {data: ../../x}}\n",
     "all.hosts.h1.hpnlab_ifnames: data: '../../x'"),
    ("all:\n  hosts:\n    h1: {ansible_host: 192.0.2.11, hpnlab_ifnames: [eth1]}\n", "hpnlab_ifnames: must map"),
    ("all:\n  hosts:\n    h1: {ansible_host: 192.0.2.11, hpnlab_dpdk_pci: '0000:03:00.1; reboot'}\n",
     "all.hosts.h1.hpnlab_dpdk_pci: must be a PCI address"),
    ("all:\n  vars: {hpnlab_dpdk_driver: 'uio; reboot'}\n", ":2: all.vars.hpnlab_dpdk_driver: must be one of"),
    ("all:\n  hosts:\n    h1: {ansible_host: -oProxyCommand=x}\n", "all.hosts.h1.ansible_host: must be an IP"),
    ("all:\n  hosts:\n    h1: {ansible_host: 192.0.2.11, ansible_port: 99999}\n", "ansible_port: must be a TCP port"),
    ("all:\n  hosts:\n    h1: {ansible_host: 192.0.2.11, ansible_user: '-oX=y'}\n", "ansible_user: must be a user"),
    ("all:\n  hosts:\n    h1: {ansible_host: 192.0.2.11, ansible_ssh_common_args: '-o \"open'}\n",
     "ansible_ssh_common_args: cannot be read as OpenSSH options: No closing quotation"),
    ("all:\n  hosts:\n    h1: {ansible_host: 192.0.2.11, ansible_ssh_common_args: '-J a@b:x'}\n",
     "cannot read ProxyJump"),
    ("all:\n  hosts:\n    h1: {ansible_host: 192.0.2.11, hpnlab_known_hosts: 5}\n",
     "hpnlab_known_hosts: must be a file"),
    # the topology's own variables come from lab.yml: an inventory cannot slip in sysctls or provider hooks
    ("all:\n  hosts:\n    h1: {ansible_host: 192.0.2.11, hpnlab_sysctls: {/etc/hostname: x}}\n",
     "all.hosts.h1.hpnlab_sysctls: is not one a static inventory sets"),
    ("all:\n  vars: {hpnlab_shares_kernel: true}\n", "all.vars.hpnlab_shares_kernel: is not one"),
    ("a: [\n", ":2: YAML:"),
    (b"all:\n  hosts: {h1: \xff}\n", ":2: byte 0xff is not UTF-8"),
])
def test_static_inventory_values_are_checked_when_read(tmp_path, text, where):
    """Values of the user's inventory reach ssh's command line and the hosts' shells (with become):
    each is checked as it is read, naming file:line and the field; nothing else is raised."""
    static = tmp_path / "static.yml"
    static.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(inventory.InventoryError) as err:
        inventory.load_static(static)
    assert f"{static}{where}" in str(err.value) or where in str(err.value), str(err.value)
    # and the static provider refuses to build the lab's inventory from it
    lab = load_lab(REPO / "lab.yml", provider="static", name="st")
    with pytest.raises(inventory.InventoryError):
        inventory.build(open_lab(lab), static_inventory=static)
