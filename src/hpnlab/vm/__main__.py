"""`python -m hpnlab.vm setup|box|prepare|apt|detect|render LAB|stop-daemons` (used by
mk/vm.mk, the Makefile's lab-up and the Vagrantfile).

`prepare` runs under the system python3 (PYTHONPATH=src), before the project's venv
exists: `make lab-up` builds a VM lab's box while pip fills the venv."""
from __future__ import annotations

import argparse
import sys
import time

from . import VmError


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpnlab.vm")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("setup", help="install packages, start libvirtd/virtlogd, define the storage pool")
    b = sub.add_parser("box", help="build (if its recipe changed) and add the hpnlab-debian12 box")
    b.add_argument("--force", action="store_true", help="rebuild even if cached")
    p = sub.add_parser("prepare", help="a VM lab's packages and box build (no daemons); nothing for other providers")
    p.add_argument("--lab", default="lab.yml")
    p.add_argument("--provider")
    a = sub.add_parser("apt", help="apt-get install PACKAGE...: a line per phase, the full log in --log")
    a.add_argument("--log", required=True)
    a.add_argument("packages", nargs="+")
    sub.add_parser("hash", help="print the box recipe hash")
    sub.add_parser("detect", help="print kvm or qemu (short timed KVM boot)")
    r = sub.add_parser("render", help="write .lab/<lab>/vagrant.json for the Vagrantfile; print its path")
    r.add_argument("lab", nargs="?", default="lab.yml")
    sub.add_parser("stop-daemons", help="stop the libvirt daemons hpnlab started (if no domain is left)")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    try:
        if args.cmd == "setup":
            from . import setup
            setup.ensure(_say)
            _say(f"vm-setup: ready in {time.monotonic() - t0:.1f} s")
        elif args.cmd == "box":
            from . import box, setup
            setup.ensure(_say)
            recipe = box.ensure(_say, force=args.force)
            _say(f"box: hpnlab-debian12 (recipe {recipe}) ready in {time.monotonic() - t0:.1f} s")
        elif args.cmd == "prepare":
            from ..providers import open_lab
            from ..topology import TopologyError
            try:
                provider = open_lab(args.lab, provider=args.provider)
            except TopologyError:
                return 0            # `hpnlab up` reports what is wrong with the lab file
            provider.prepare(_say)  # while pip still runs
        elif args.cmd == "apt":
            from pathlib import Path

            from . import apt
            apt.install(args.packages, _say, Path(args.log))
        elif args.cmd == "hash":
            from . import box
            print(box.recipe_hash())
        elif args.cmd == "detect":
            from . import accel, box
            print(accel.detect(box.kernel_path(), _say))
        elif args.cmd == "render":
            from ..providers.vagrant import VagrantProvider
            from ..topology import load_lab
            lab = load_lab(args.lab, provider="vagrant")
            print(VagrantProvider(lab.with_provider("vagrant")).render())
        elif args.cmd == "stop-daemons":
            from . import setup
            for what in setup.stop_daemons(_say):
                _say(f"stopped {what}")
    except VmError as exc:
        _say(f"error: {exc}")
        if args.cmd == "prepare":
            _say("(no lab was brought up; `make lab-up PROVIDER=netns` needs no hypervisor)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
