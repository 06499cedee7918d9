"""The vagrant provider: lab hosts as real VMs (libvirt/QEMU through Vagrant).

    up    vm-setup (packages, libvirtd/virtlogd, storage pool) -> the box (built
          locally from Debian packages, cached by recipe hash) -> KVM or TCG
          (short timed boot) -> a per-lab SSH key -> .lab/<lab>/vagrant.json
          (the model + resolved VM settings) -> `vagrant up` with the top-level
          Vagrantfile -> management addresses -> sysctls, netem
    down  every libvirt domain, volume and network named hpnlab-<lab>-*, the
          QEMU processes of those guests, the lab's files; then the libvirt
          daemons hpnlab started, once no domain is left

State is written ahead: what `up` is about to create (by name) is recorded
before `vagrant up` runs, and `cleanup` finds leftovers by name prefix even
without a state file (after kill -9 of the whole bring-up).
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .. import vm
from ..hosts import Host
from ..hosts.ssh import CONSOLE_RECORD, SshHost, known_hosts_args
from ..paths import repo_root
from ..state import register_live, unregister_live
from ..topology import Lab, sysctls
from ..vm import accel, virt
from ..vm import box as vmbox
from ..vm import setup as vmsetup
from . import Progress, Provider, ProviderError, _quiet, is_lab_nft_table

BOOT_TIMEOUT = int(os.environ.get("HPNLAB_VM_BOOT_TIMEOUT", "600"))
# Each guest's serial console goes to a file here (QEMU's user must reach it: not under .lab/).
CONSOLE_DIR = vm.POOL_DIR.parent / "console"
# What the hpnlab box prints on its console at every boot (box/files/hpnlab-hostkeys.service)
HOSTKEY_LINE = re.compile(r"hpnlab-hostkey: (ssh-ed25519|ecdsa-sha2-nistp\d+|ssh-rsa) ([A-Za-z0-9+/]+=*)")


class VagrantProvider(Provider):
    name = "vagrant"

    @classmethod
    def validate(cls, lab: Lab) -> list[tuple[int, str, str]]:
        """Sysctls against the guests' kernel, every key a guest's own (it is its own kernel):
        hpnlab's box's names, as the first `up` on that box recorded them; before that, and
        for another box, this (Debian 12) machine's kernel stands in (a guest refuses a key
        its kernel lacks at `up`). And the `vm:` block, this provider's own settings."""
        own_box = (lab.vm or {}).get("box") in (None, vm.BOX_NAME)
        names = vmbox.sysctl_names() if own_box else None
        return (sysctls.lab_problems(lab, namespaces=False, names=names,
                                     kernel="the box's kernel" if names is not None else "this kernel")
                + vm.settings_problems(lab))

    def ansible_connection(self, host: str) -> dict:
        """SSH as root with the lab's key to the VM's management address, its host key
        checked against the one `up` recorded from the VM's console and no other."""
        address = ((self.state.read() or {}).get("hosts") or {}).get(host, {}).get("address")
        if not address:
            raise ProviderError(f"host {host}: the vagrant provider has no SSH address for it "
                                f"(is the VM up? `make lab-up PROVIDER=vagrant`)")
        return {"ansible_connection": "ssh", "ansible_host": address, "ansible_port": 22,
                "ansible_user": "root", "ansible_become": False,
                "ansible_python_interpreter": "/usr/bin/python3",
                "ansible_ssh_private_key_file": str(self.key_path),
                "ansible_ssh_common_args": shlex.join([*known_hosts_args(str(self.known_hosts_path)),
                                                       "-o", "IdentitiesOnly=yes"]),
                "hpnlab_host_keys_recorded_by": CONSOLE_RECORD}

    def prepare(self, progress: Progress = _quiet) -> None:
        """The packages, the box and the KVM probe (a test boot of up to 20 s where KVM hangs)."""
        vmsetup.ensure_packages(progress)
        settings = self.settings()
        if settings["box"] == vm.BOX_NAME:
            vmbox.prebuild(progress)
            accel.detect(vmbox.kernel_path(), progress, settings["driver"])

    # -- names and files -------------------------------------------------------
    @property
    def prefix(self) -> str:
        return vm.lab_prefix(self.lab.name)

    def domain(self, host: str) -> str:
        return f"{self.prefix}{host}"

    @property
    def mgmt_network(self) -> str:
        return f"{self.prefix}mgmt"

    @property
    def spec_path(self) -> Path:
        return self.state.dir / "vagrant.json"

    @property
    def dotfile(self) -> Path:
        return self.state.dir / "vagrant"

    @property
    def key_path(self) -> Path:
        return self.state.dir / "ssh" / "id_ed25519"

    @property
    def known_hosts_path(self) -> Path:
        """The guests' SSH host keys as `up` recorded them from their consoles."""
        return self.state.dir / "known_hosts"

    def settings(self) -> dict:
        return vm.settings(self.lab)

    def expected(self) -> dict:
        """Every libvirt object `up` may create, by name (recorded before creating)."""
        return {"domains": [self.domain(h) for h in self.lab.hosts],
                "volumes": [f"{self.domain(h)}.img" for h in self.lab.hosts],
                "networks": [self.mgmt_network] + [f"{self.prefix}{n}" for n in self.lab.networks]}

    # -- lifecycle ---------------------------------------------------------------
    def is_up(self) -> bool:
        state = self.state.read()
        if not (state and state.get("phase") == "up"):
            return False
        try:
            running = set(virt.running_domains(self.prefix))
        except vm.VmError:
            return False
        return all(d in running for d in state.get("domains", []))

    def up(self, progress: Progress = _quiet) -> bool:
        _require_root()
        with self.state.lock(timeout=BOOT_TIMEOUT), vmsetup.bringing_up():
            register_live(self.name, self.lab.name, self.state.path)
            if self.is_up():
                progress(f"lab {self.lab.name} is already up: nothing changed")
                return False
            try:
                settings = self.settings()
                own_box = settings["box"] == vm.BOX_NAME
                # KVM or TCG before libvirtd starts: which /dev/kvm it sees depends on it
                vmsetup.ensure_packages(progress)
                if own_box:
                    vmbox.prebuild(progress)
                driver = accel.detect(vmbox.kernel_path() if own_box else None, progress, settings["driver"])
                vmsetup.ensure(progress, kvm=driver == "kvm")
                if own_box:
                    vmbox.ensure(progress)
            except vm.VmError as exc:
                unregister_live(self.name, self.lab.name)
                vmsetup.stop_daemons(progress)          # those this run started, with no domain left
                raise ProviderError(f"{exc}\n(nothing of lab {self.lab.name} was created; "
                                    f"`make lab-up PROVIDER=netns` needs no hypervisor)") from None
            if self.state.read() or virt.domains(self.prefix) or virt.networks(self.prefix):
                progress("removing leftovers of an earlier, unfinished run")
                self._remove(progress, keep_daemons=True)
            # write-ahead (names before anything exists); a failure rolls back through
            # _teardown, which also stops the daemons this run started
            self._bring_up(progress, prefix=self.prefix, **self.expected(), driver=driver)
        return True

    def _create(self, state: dict, progress: Progress) -> None:
        settings, driver = self.settings(), state["driver"]
        self._ensure_key()
        subnet = self._management_subnet(settings)
        state["management_subnet"] = subnet
        self.state.write(state)
        self._copy_boot_files(settings)          # this box's kernel, not an older one
        CONSOLE_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        _remove_console_logs(state["domains"])   # libvirt appends: no key of an earlier guest
        self.render(driver=driver, subnet=subnet)
        progress(f"vagrant up: {len(self.lab.hosts)} VM(s), driver {driver}"
                 + (" (TCG: software emulation)" if driver == "qemu" else ""))
        self._vagrant(["up", "--provider", "libvirt", "--parallel", *self.lab.hosts], progress,
                      timeout=BOOT_TIMEOUT, log="vagrant-up.log")
        state["hosts"] = {}
        for hname in self.lab.hosts:
            ip = virt.domain_ip(self.domain(hname), self.mgmt_network)
            if not ip:
                raise ProviderError(f"no management address for {self.domain(hname)}")
            state["hosts"][hname] = {"address": ip, "domain": self.domain(hname)}
        self.state.write(state)
        progress("management addresses: " + ", ".join(f"{h} {v['address']}" for h, v in state["hosts"].items()))
        self._record_host_keys(state["hosts"], settings, progress)
        hosts = self._hosts_during_up(state)

        def ready(host: Host) -> None:
            self._wait_ssh(host)
            self._configure(host, state)
        with ThreadPoolExecutor(max_workers=len(hosts)) as pool:    # each SSH handshake is slow under TCG
            for done in [pool.submit(ready, host) for host in hosts.values()]:
                done.result()
        if settings["box"] == vm.BOX_NAME:      # what validate() checks the next lab files against
            files = next(iter(hosts.values())).run(["find", "/proc/sys", "-type", "f", "-printf", "%P\\n"],
                                                    timeout=60, check=False).stdout
            vmbox.record_sysctl_names(files.replace("/", "."))      # (sysctl -aN leaves out write-only keys)
        progress("data NICs checked, sysctls applied")
        self._impair(hosts, state, progress)

    def _record_host_keys(self, hosts: dict, settings: dict, progress: Progress) -> None:
        """Write known_hosts from the key each guest printed on its serial console at boot: a
        channel from the hypervisor, which nothing on the management network can forge. Every
        later SSH connection (Fabric, Ansible, testinfra) accepts that key and no other."""
        lines = []
        for hname, entry in hosts.items():
            log = _console_log(entry["domain"])
            deadline = time.monotonic() + 30        # printed before sshd starts: there by now
            while not (found := HOSTKEY_LINE.findall(log.read_text(errors="replace") if log.exists() else "")):
                if settings["box"] != vm.BOX_NAME or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            if found:
                lines += [f"{entry['address']} {kind} {blob}\n" for kind, blob in dict(found).items()]
            elif settings["box"] != vm.BOX_NAME:     # a box that prints no key: trust the first answer
                scan = vm.run(["ssh-keyscan", "-T", "30", entry["address"]], check=False, timeout=60)
                lines += [line + "\n" for line in scan.stdout.splitlines() if line and not line.startswith("#")]
                progress(f"{hname}: box {settings['box']} prints no host key on its console: "
                         f"trusting the keys it offered on first contact")
            else:
                raise ProviderError(f"[{hname}] printed no SSH host key on its serial console ({log}); "
                                    f"hpnlab connects to no VM whose key it has not recorded")
        fd = os.open(self.known_hosts_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.writelines(lines)
        progress(f"SSH host keys recorded from the guests' consoles: {self.known_hosts_path}")

    def _configure(self, host: Host, state: dict) -> None:
        """Check each data NIC has the model's MAC and address; apply sysctls."""
        spec = host.spec
        deadline = time.monotonic() + 60
        while True:
            links = host.links()
            missing = []
            for nic in spec.nics:
                link = links.get(nic.ifname)
                if not link or link.mac != nic.mac.lower() or str(nic.address) not in link.inet:
                    missing.append(f"{nic.ifname} ({nic.mac}, {nic.address}; have "
                                   f"{link.mac if link else None}, {list(link.inet) if link else []})")
            if not missing:
                break
            if time.monotonic() > deadline:
                raise ProviderError(f"[{host.name}] data NIC(s) not as the model says: {'; '.join(missing)}")
            time.sleep(1)
        sysctls = {**self.lab.machine_sysctls, **spec.sysctls}
        if sysctls:
            host.run(["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in sysctls.items())], timeout=30)

    def _wait_ssh(self, host: Host, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            r = host.run("true", timeout=20, check=False)
            if r.ok:
                return
            if time.monotonic() > deadline:
                raise ProviderError(f"[{host.name}] no SSH as root with the lab key: {r.stderr.strip()}")
            time.sleep(1)

    lock_timeout = BOOT_TIMEOUT     # a `down` may wait for an `up` that is booting guests

    def down(self, progress: Progress = _quiet) -> None:
        _require_root()
        super().down(progress)

    def _teardown(self, progress: Progress) -> None:
        self._remove(progress, keep_daemons=False)
        left = virt.kept_on_disk(self.prefix)
        if left:     # they would come back with libvirtd's next start
            raise ProviderError(f"lab {self.lab.name}: libvirt still keeps {', '.join(left)}; "
                                f"`hpnlab --provider vagrant cleanup --only {self.lab.name}` removes them")

    def _remove(self, progress: Progress, keep_daemons: bool) -> None:
        """Everything of the lab; `keep_daemons`: leftovers cleared by `up` itself (its
        registry entry and the daemons it started stay)."""
        state = self.state.read() or {}
        _kill_vagrant(self.lab.name, progress)
        if vmsetup.LIBVIRT_SOCK.exists() or virt.qemu_processes(self.prefix) or virt.kept_on_disk(self.prefix):
            if not virt.available() and shutil.which("libvirtd"):
                vmsetup.ensure_daemons(progress)    # leftovers exist: libvirt must be up to remove them
            virt.remove_all(self.prefix, progress)
            # also anything recorded under other names (a renamed prefix)
            for dom in state.get("domains", []):
                if not dom.startswith(self.prefix):
                    virt.remove_all(dom, progress)
        _forget_machines(self.dotfile)
        _remove_boot_files(self.prefix)
        if not keep_daemons:
            unregister_live(self.name, self.lab.name)
        for path in (self.dotfile, self.spec_path.parent / "ssh", self.state.logdir,
                     self.state.dir / "vagrant.d"):
            shutil.rmtree(path, ignore_errors=True)
        self.spec_path.unlink(missing_ok=True)
        self.known_hosts_path.unlink(missing_ok=True)
        _remove_console_logs({*state.get("domains", []), *self.expected()["domains"]})
        for table in remove_lab_nft_tables(self.lab.name):
            progress(f"removed nftables table {table} (a lab run ended before removing it)")
        self.state.remove()
        if not keep_daemons:
            for what in vmsetup.stop_daemons(progress):
                progress(f"stopped {what}")

    @classmethod
    def _still_runs(cls, lab: str) -> bool:
        return bool(virt.qemu_processes(vm.lab_prefix(lab)))

    @classmethod
    def cleanup(cls, progress: Progress = _quiet, lab: str | None = None) -> list[str]:
        _require_root()
        prefix = vm.lab_prefix(lab) if lab else vm.PREFIX
        # Without --only, labs that are up or coming up (in any state directory) are
        # not leftovers: they stay. A lab named with --only goes whatever its state.
        live_labs, states = cls._leftovers(lab, progress)
        live = tuple(vm.lab_prefix(name) for name in sorted(live_labs))
        removed = [f"vagrant pid {p}" for p in _kill_vagrant(lab, progress, skip=live)]
        leftovers = [name for name in [*virt.qemu_processes(prefix).values(), *virt.kept_on_disk(prefix)]
                     if not any(vm.owns(p, name) for p in live)]
        if not virt.available() and (leftovers or states) and shutil.which("libvirtd"):
            vmsetup.ensure_daemons(progress)
        removed += virt.remove_all(prefix, progress, keep=live)
        for path in _dead_labs_files(lab, live):
            path.unlink(missing_ok=True)
            removed.append(f"file {path}")
        for st in states:
            data = st.read() or {}
            for dom in data.get("domains", []):
                if not dom.startswith(prefix):
                    removed += virt.remove_all(dom, progress)
            _forget_machines(st.dir / "vagrant")
            if data.get("prefix"):
                _remove_boot_files(data["prefix"])
            _remove_console_logs(data.get("domains", []))
            for path in (st.dir / "vagrant", st.dir / "ssh", st.logdir, st.dir / "vagrant.d"):
                shutil.rmtree(path, ignore_errors=True)
            (st.dir / "vagrant.json").unlink(missing_ok=True)
            (st.dir / "known_hosts").unlink(missing_ok=True)
            st.remove()
            st.discard()
            removed.append(f"state {st.dir}")
        cls._forget_dead(lab, live_labs)
        for what in vmsetup.stop_daemons(progress):
            removed.append(what)
        return removed

    # -- rendering for the Vagrantfile ----------------------------------------------
    def _copy_boot_files(self, settings: dict) -> None:
        """`up`: the lab's own copy of the hpnlab box's kernel and initrd (where QEMU's user
        can read them), so a box rebuilt meanwhile cannot pull them from under its disks."""
        files = vmbox.boot_files() if settings["box"] == vm.BOX_NAME else None
        if files:
            vm.BOOT_DIR.mkdir(parents=True, exist_ok=True)
            for key, copy in _boot_copies(self.prefix).items():
                shutil.copyfile(files[key], copy)

    def _direct_boot(self, settings: dict) -> dict:
        """QEMU boots the hpnlab box's kernel itself: SeaBIOS and GRUB reading it through
        BIOS disk calls cost a TCG guest ~5 s a boot. Only with the copies `up` made
        (a bare `vagrant up` of a lab hpnlab never brought up boots through GRUB)."""
        files = vmbox.boot_files() if settings["box"] == vm.BOX_NAME else None
        copies = _boot_copies(self.prefix)
        if not files or not all(p.exists() for p in copies.values()):
            return {}
        return {"kernel": str(copies["kernel"]), "initrd": str(copies["initrd"]),
                "cmdline": files["cmdline"].read_text().strip()}

    def render(self, driver: str | None = None, subnet: str | None = None) -> Path:
        """Write .lab/<lab>/vagrant.json: Lab.to_dict() plus the resolved VM settings."""
        settings = self.settings()
        driver = driver or accel.detect(vmbox.kernel_path(), _quiet, settings["driver"])
        self._ensure_key()
        doc = self.lab.to_dict()
        doc["vagrant"] = {
            "prefix": self.prefix,
            "box": settings["box"],
            "driver": driver,
            "tb_size_mb": settings["tb_size_mb"],
            "dpdk_queues": settings["dpdk_queues"],
            "iommu": settings["iommu"],
            "nat": settings["nat"],
            "management_subnet": subnet or self._management_subnet(settings),
            "pool": vm.POOL,
            "ssh_key": str(self.key_path),
            "ssh_pubkey": (self.key_path.with_suffix(".pub")).read_text().strip(),
            "console_dir": str(CONSOLE_DIR),
            **self._direct_boot(settings),
        }
        self.state.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.spec_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
        tmp.replace(self.spec_path)
        return self.spec_path

    def _ensure_key(self) -> None:
        """The lab's own SSH key (ed25519, 0600), made once per lab."""
        if self.key_path.exists() and self.key_path.with_suffix(".pub").exists():
            return
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        self.key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.state.dir, 0o700)
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(private)
        self.key_path.with_suffix(".pub").write_text(public.decode() + f" hpnlab-{self.lab.name}\n")

    def _management_subnet(self, settings: dict) -> str:
        """lab.yml's vm.management_subnet, else a /24 in 192.168.100-227 picked from the
        lab name, skipping ones another libvirt network or a host route already uses."""
        state = self.state.read() or {}
        if settings["management_subnet"] != "auto":
            return str(ipaddress.ip_network(settings["management_subnet"], strict=False))
        if state.get("management_subnet"):
            return state["management_subnet"]
        used = _used_subnets()
        start = int(hashlib.sha256(self.lab.name.encode()).hexdigest(), 16) % 128
        for i in range(128):
            net = ipaddress.ip_network(f"192.168.{100 + (start + i) % 128}.0/24")
            if not any(net.overlaps(u) for u in used):
                return str(net)
        raise ProviderError("no free /24 for the management network in 192.168.100.0-192.168.227.0; "
                            "set vm.management_subnet in lab.yml")

    def _vagrant(self, args: list[str], progress: Progress, timeout: float, log: str) -> None:
        env = vmbox.vagrant_env()
        env.update(HPNLAB_VAGRANT_JSON=str(self.spec_path), VAGRANT_DOTFILE_PATH=str(self.dotfile),
                   VAGRANT_CWD=str(repo_root()), HPNLAB_VAGRANT_LAB=self.lab.name,
                   VAGRANT_HOME=str(vmbox.lab_vagrant_home(self.state.dir / "vagrant.d")))
        self.state.logdir.mkdir(parents=True, exist_ok=True)
        logfile = self.state.logdir / log
        started = time.monotonic()
        with open(logfile, "w") as out:
            proc = subprocess.Popen(["vagrant", *args], cwd=repo_root(), env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            assert proc.stdout is not None      # (a pipe)
            try:
                for line in proc.stdout:
                    out.write(line)
                    out.flush()
                    text = line.strip()
                    if text.startswith("==>") and _interesting(text):
                        progress(text[4:])
                    if time.monotonic() - started > timeout:
                        raise ProviderError(f"`vagrant {' '.join(args)}` took more than {timeout}s; log: {logfile}")
                rc = proc.wait()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        if rc != 0:
            lines = logfile.read_text(errors="replace").splitlines(True)
            # keep the log past the rollback, beside the lab's state directory
            kept = self.state.dir.parent / f"{self.lab.name}-{log}"
            kept.write_text("".join(lines))
            starts = [i for i, line in enumerate(lines) if line.startswith("An error occurred while executing")
                      or "Error" in line.split(":")[0]]
            excerpt = "".join(lines[starts[0]:starts[0] + 15] if starts else lines[-25:])
            raise ProviderError(f"`vagrant {' '.join(args)}` failed (exit {rc}); log: {kept}\n{excerpt}")

    # -- using a running lab -------------------------------------------------------
    def _usable(self, state: dict) -> bool:
        return state.get("phase") == "up"         # (is_up asks libvirt, which may be slow to answer)

    def _make_hosts(self, state: dict, record) -> dict:
        return {name: SshHost(spec, state["hosts"][name]["address"], user="root", key=self.key_path,
                              record=record, known_hosts=self.known_hosts_path, recorded_by=CONSOLE_RECORD)
                for name, spec in self.lab.hosts.items()}

    def _ssh_target(self, host: str) -> str:
        self.host(host)
        return f"root@{(self.state.read() or {})['hosts'][host]['address']}"

    def ssh_argv(self, host: str) -> list[str]:
        return ["ssh", "-i", str(self.key_path), "-o", "IdentitiesOnly=yes",
                *known_hosts_args(str(self.known_hosts_path)), "-o", "LogLevel=ERROR", self._ssh_target(host)]

    def shell_argv(self, host: str) -> list[str]:
        return [*self.ssh_argv(host), "-t", f"HPNLAB_HOST={host} exec bash -l"]

    def capture_argv(self, target: str, extra: list[str]) -> list[str]:
        """Capture on the host side: a data network's bridge, or HOST:NIC's tap device."""
        if ":" in target:
            hname, nic_name = target.split(":", 1)
            nic = self.nic_of(hname, nic_name)
            tap = virt.tap_of(self.domain(hname), nic.mac)
            if not tap:
                raise ProviderError(f"no tap device for {hname}:{nic.ifname} (is the lab up?)")
            return ["tcpdump", "-i", tap, "-n", *extra]
        if target not in self.lab.networks:
            raise ProviderError(f"no network {target!r} (networks: {', '.join(self.lab.networks)}; "
                                f"or give HOST:NIC)")
        bridge = virt.bridge_of(f"{self.prefix}{target}")
        if not bridge:
            raise ProviderError(f"network {target} has no bridge (is the lab up?)")
        return ["tcpdump", "-i", bridge, "-n", *extra]

    def switch_port(self, host: str, network: str) -> tuple[str | None, str] | None:
        """The guest NIC's tap on its libvirt network's bridge, in this machine's namespace."""
        tap = virt.tap_of(self.domain(host), self.nic_of(host, network).mac)
        return (None, tap) if tap else None

    def _where(self, host: str, state: dict) -> str:
        return f"vm {(state.get('hosts') or {}).get(host, {}).get('address', '-')}"

    def _status_extras(self, state: dict) -> dict:
        return {"driver": state.get("driver"), "management_subnet": state.get("management_subnet")}


PROVIDER = VagrantProvider


# -- helpers ------------------------------------------------------------------------

def _interesting(line: str) -> bool:
    return any(word in line for word in ("Creating domain", "Starting domain", "Waiting for domain",
                                         "Uploading base box", "Machine booted", "Running provisioner",
                                         "rror"))


def remove_lab_nft_tables(lab: str) -> list[str]:
    """Delete what a lab's runs left in this machine's nftables: the tables named
    hpnlab_<what>_<lab> that a lab puts on the VMs' bridges here (pktgen's loss rule)
    when the run was killed before it could remove them."""
    listed = subprocess.run(["nft", "-j", "list", "tables"], capture_output=True, text=True)
    if listed.returncode != 0:
        return []
    removed = []
    for item in json.loads(listed.stdout).get("nftables", []):
        table = item.get("table")
        name = table["name"] if table else ""
        if is_lab_nft_table(name, lab):
            subprocess.run(["nft", "delete", "table", table["family"], table["name"]], capture_output=True)
            removed.append(f"{table['family']} {table['name']}")
    return removed


def _require_root() -> None:
    if os.geteuid() != 0:
        raise ProviderError("the vagrant provider needs root (libvirt system daemon, bridges)")


def _used_subnets() -> list[ipaddress.IPv4Network]:
    used = []
    out = subprocess.run(["ip", "-4", "-j", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    for route in json.loads(out or "[]"):
        dst = route.get("dst", "")
        if dst and dst != "default" and "/" in dst:
            try:
                used.append(ipaddress.IPv4Network(dst, strict=False))
            except ValueError:
                pass
    if virt.available():
        for net in virt.networks(""):
            xml = vm.run([*virt.VIRSH, "net-dumpxml", net], check=False).stdout
            for part in xml.split("<ip ")[1:]:
                attrs = dict(a.split("=", 1) for a in part.split(">")[0].split() if "=" in a)
                addr, mask = attrs.get("address", "").strip("'\""), attrs.get("netmask", "").strip("'\"")
                if addr and mask:
                    used.append(ipaddress.IPv4Network(f"{addr}/{mask}", strict=False))
    return used


def _kill_vagrant(lab: str | None, progress: Progress, skip: tuple[str, ...] = ()) -> list[int]:
    """End `vagrant` processes hpnlab started for `lab` (or any lab but the `skip`
    prefixes): they carry HPNLAB_VAGRANT_LAB in their environment."""
    killed = []
    me = os.getpid()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == me:
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        tag = next((e[len(b"HPNLAB_VAGRANT_LAB="):].decode() for e in env
                    if e.startswith(b"HPNLAB_VAGRANT_LAB=")), None)
        if tag is None or (lab is not None and tag != lab) or (skip and vm.lab_prefix(tag).startswith(skip)):
            continue
        try:
            comm = (proc / "comm").read_text().strip()
        except OSError:
            continue
        if comm not in ("vagrant", "ruby", "ruby3.1"):
            continue
        pid = int(proc.name)
        progress(f"ending vagrant (pid {pid}) of lab {tag}")
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    return killed


def _boot_copies(prefix: str) -> dict[str, Path]:
    """A lab's copy of the box kernel and initrd (exact names: lab `a` spares lab `a-b`'s)."""
    return {"kernel": vm.BOOT_DIR / f"{prefix}vmlinuz", "initrd": vm.BOOT_DIR / f"{prefix}initrd.img"}


def _dead_labs_files(lab: str | None, live: tuple[str, ...]) -> list[Path]:
    """The kernel copies and console logs of `lab` (all labs: None) but those of the `live`
    prefixes. Lab `a`'s are its prefix and a name without "-" (`vmlinuz`, `<host>.log`: a
    host's name has none), so lab `a`'s cleanup spares lab `a-b`'s files."""
    prefix = vm.lab_prefix(lab) if lab else vm.PREFIX
    return [path for path in [*vm.BOOT_DIR.glob(f"{prefix}*"), *CONSOLE_DIR.glob(f"{prefix}*")]
            if vm.owns(prefix, path.name) and not any(vm.owns(p, path.name) for p in live)]


def _remove_boot_files(prefix: str) -> None:
    for path in _boot_copies(prefix).values():
        path.unlink(missing_ok=True)


def _console_log(domain: str) -> Path:
    return CONSOLE_DIR / f"{domain}.log"


def _remove_console_logs(domains) -> None:
    for domain in domains:
        _console_log(domain).unlink(missing_ok=True)


def _forget_machines(dotfile: Path) -> None:
    """Drop the lab's machines from Vagrant's global machine index: hpnlab removes
    VMs through libvirt, so Vagrant would otherwise keep listing them as running
    (and `vagrant` commands of other labs would trip over them)."""
    index = vmbox.vagrant_home() / "data" / "machine-index" / "index"
    if not index.exists():
        return
    import fcntl
    with open(index.with_name("index.lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            data = json.loads(index.read_text())
        except (OSError, ValueError):
            return
        machines = data.get("machines", {})
        keep = {k: v for k, v in machines.items() if v.get("local_data_path") != str(dotfile)}
        if len(keep) != len(machines):
            data["machines"] = keep
            tmp = index.with_name("index.hpnlab-tmp")
            tmp.write_text(json.dumps(data))
            tmp.replace(index)
