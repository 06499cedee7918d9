"""The NIC a VM gives DPDK gets `vm.dpdk_queues` queue pairs: the Vagrantfile, read by Ruby
with Vagrant's configuration calls recorded instead of run, asks vagrant-libvirt for
`<driver queues='N'/>` on that NIC only; bad values are named when the lab file is read."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from hpnlab.providers.vagrant import VagrantProvider
from hpnlab.topology import TopologyError, parse_lab

REPO = Path(__file__).resolve().parents[2]

LAB = """
name: vq
provider: vagrant
vm: {driver: qemu, dpdk_queues: QUEUES}
hosts:
  h1: {dpdk: fast}
  h2: {}
networks:
  data: {type: lan, subnet: 10.89.1.0/24, hosts: [h1, h2]}
  fast: {type: lan, subnet: 10.89.2.0/24, hosts: [h1, h2]}
"""

# Vagrant's configuration object, recording what each machine's networks ask for.
RECORDER = r"""
require "json"
class Any
  def initialize(rec, name = nil) = (@rec, @name = rec, name)
  def respond_to_missing?(*) = true
  def method_missing(m, *args, **opts, &blk)
    return Any.new(@rec, args[0]).tap { |node| blk&.call(node) } if m == :define
    (@rec[@name] ||= []) << opts if m == :network && @name
    blk&.call(self) if m == :provider
    self
  end
end
module Vagrant
  REC = {}
  def self.configure(_version) = yield(Any.new(REC))
  def self.source_root = "/nonexistent"
end
load ARGV[0]
puts JSON.generate(Vagrant::REC)
"""


def networks_asked(tmp_path, queues: int) -> dict[str, list[dict]]:
    provider = VagrantProvider(parse_lab(LAB.replace("QUEUES", str(queues))), state_root=tmp_path)
    spec = provider.render()
    script = tmp_path / "record.rb"
    script.write_text(RECORDER)
    proc = subprocess.run(["ruby", str(script), str(REPO / "Vagrantfile")], capture_output=True, text=True,
                          timeout=60, env={"HPNLAB_VAGRANT_JSON": str(spec), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.mark.skipif(not shutil.which("ruby"), reason="Ruby comes with Vagrant (make setup installs it)")
def test_only_the_dpdk_nic_gets_the_queue_pairs(tmp_path):
    asked = networks_asked(tmp_path, 2)
    queues = {host: [(n["libvirt__network_name"].rsplit("-", 1)[1], n["libvirt__driver_queues"]) for n in nets]
              for host, nets in asked.items()}
    assert queues == {"h1": [("data", False), ("fast", 2)], "h2": [("data", False), ("fast", False)]}
    one = networks_asked(tmp_path, 1)
    assert all(n["libvirt__driver_queues"] is False for nets in one.values() for n in nets)


@pytest.mark.parametrize("value", [0, 9, "two"])
def test_a_queue_count_a_vm_cannot_take_is_named(value):
    with pytest.raises(TopologyError, match="vm.dpdk_queues"):
        parse_lab(LAB.replace("QUEUES", str(value)), provider="vagrant")
