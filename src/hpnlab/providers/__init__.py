"""Providers turn the topology model into running hosts.

Each provider is one module with one class behind this small interface, in
the shape of netlab's providers: lifecycle hooks plus what the CLI needs
(status rows, a shell, a capture). `open_lab()` is how labs and tests get
the hosts of a running lab.
"""
from __future__ import annotations

import importlib
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from .. import impair
from ..errors import HpnlabError
from ..hosts import CommandError, Host
from ..state import LabState, register_live, registered, state_root, unregister_live
from ..topology import Lab, load_lab

Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


def lab_nft_table(what: str, lab: str) -> str:
    """The nftables table a lab run makes in this machine's namespace (pktgen's loss rule
    on the VMs' bridge); `vagrant down` removes those a killed run left."""
    return f"hpnlab_{what}_{re.sub(r'[^0-9A-Za-z_]', '_', lab)}"


def is_lab_nft_table(table: str, lab: str) -> bool:
    """Whether `table` is one of lab_nft_table's for `lab` (of any purpose)."""
    return table.startswith("hpnlab_") and table == lab_nft_table(table.split("_")[1], lab)


class ProviderError(HpnlabError, RuntimeError):
    """A lifecycle step failed; the message says what and what to do."""
    hint = "`hpnlab status` shows the lab's hosts, NICs and whether it is up"


class Provider(ABC):
    name: str = "?"

    def __init__(self, lab: Lab, state_root: Path | None = None):
        self.lab = lab
        self.state = LabState(lab.name, state_root)

    # -- lifecycle ---------------------------------------------------------
    @abstractmethod
    def up(self, progress: Progress = _quiet) -> bool:
        """Bring the lab up. Returns False (and changes nothing) if it already is."""

    lock_timeout: float = 60.0          # how long a lifecycle step waits for another one

    def _bring_up(self, progress: Progress, **records) -> None:
        """`up`'s common part, under the lab's lock: write the state ahead (phase creating,
        plus the provider's `records` of what it will make), register the lab as live, run
        `_create`; on any failure roll back with `_teardown` and raise a ProviderError (Ctrl-C
        stays itself); else mark the lab up."""
        state = {"lab": self.lab.name, "provider": self.name, "phase": "creating", "started": time.time(),
                 "processes": [], "source": str(self.lab.source or ""), "topology": self.lab.to_dict(),
                 **records}
        self.state.write(state)
        register_live(self.name, self.lab.name, self.state.path)
        try:
            self._create(state, progress)
        except BaseException as exc:
            progress(f"bring-up failed ({exc}); rolling back")
            try:
                self._teardown(progress)
            finally:
                unregister_live(self.name, self.lab.name)
            if isinstance(exc, (KeyboardInterrupt, SystemExit, ProviderError)):
                raise
            raise ProviderError(f"bring-up of {self.lab.name} failed and was rolled back: {exc}") from exc
        state["phase"] = "up"
        state["ready"] = time.time()
        self.state.write(state)

    @abstractmethod
    def _create(self, state: dict, progress: Progress) -> None:
        """up's work, under the lab's lock, once its state is written ahead (see _bring_up)."""

    def _impair(self, hosts: dict[str, Host], state: dict, progress: Progress) -> None:
        """Each member's egress onto an impaired network, for as long as the lab is up (the
        hosts' removal takes qdiscs, rules and delay lines along); state.json records the
        mechanism of each network for `hpnlab status`."""
        impaired = [n for n in self.lab.networks.values() if n.impair]
        if not impaired:
            return
        mechanisms = state.setdefault("impairments", {})
        for net in impaired:
            for member in net.members:
                ifname = self.lab.hosts[member].nic(net.name).ifname
                plan = impair.apply(hosts[member], ifname, net.impair, queue=int(ifname.removeprefix("eth")))
                mechanisms[net.name] = plan.mechanism
        self.state.write(state)
        progress(f"impaired {len(impaired)} network(s): " + "; ".join(f"{k}: {v}" for k, v in mechanisms.items()))

    def down(self, progress: Progress = _quiet) -> None:
        """Remove everything the lab made, including processes it started."""
        with self.state.lock(timeout=self.lock_timeout):
            self._teardown(progress)
        self.state.discard()

    @abstractmethod
    def _teardown(self, progress: Progress) -> None:
        """down's work, under the lab's lock (a failed `up` rolls back with it too)."""

    @abstractmethod
    def is_up(self) -> bool: ...

    @classmethod
    @abstractmethod
    def cleanup(cls, progress: Progress = _quiet, lab: str | None = None) -> list[str]:
        """Find leftovers of hpnlab labs (all, or one) without trusting state; remove them."""

    @classmethod
    def _leftovers(cls, lab: str | None, progress: Progress) -> tuple[set[str], list[LabState]]:
        """What a cleanup may touch: the provider's labs that are live (kept, unless one is
        named with --only) and the state of the others, in this state directory and wherever
        the registry says an `up` kept its own."""
        registry = registered(cls.name)
        live: set[str] = set()
        if lab is None:             # a lab named with --only goes whatever its state
            for name, entry in sorted(registry.items()):
                if entry["coming_up"] or (entry["live"] and cls._still_runs(name)):
                    live.add(name)
                    progress(f"lab {name} is live (up or coming up): kept")
                elif entry["live"]:
                    progress(f"lab {name}: its state says up, but nothing of it runs "
                             "(killed, or the machine restarted): a leftover")
        root = state_root()
        files = sorted(root.glob("*/state.json")) if root.exists() else []
        files += [e["state"] for e in registry.values() if e["state"] and e["state"] not in files]
        states = []
        for path in files:
            name = path.parent.name
            if (lab is not None and name != lab) or name in live:
                continue
            st = LabState(name, path.parent.parent)
            if (st.read() or {}).get("provider") in (None, cls.name):
                states.append(st)
        return live, states

    @classmethod
    def _still_runs(cls, lab: str) -> bool:
        """Whether a lab whose state says up still has its machines running; by default
        what the state says is believed."""
        return True

    @classmethod
    def _forget_dead(cls, lab: str | None, live: set[str]) -> None:
        """Drop the registry entries of labs a cleanup has removed."""
        for name in registered(cls.name) if lab is None else [lab]:
            if name not in live:
                unregister_live(cls.name, name)

    # -- hooks: what differs between providers, each with the answer most providers give --
    # The hosts run on this machine's kernel (namespaces): they share its CPUs, /proc,
    # tracefs and file system too; what provisioning takes from the kernel (hugepages,
    # vm.* sysctls) is the machine's, to give back.
    shares_kernel: bool = False
    # The machines exist before `up` (provision and verify may run on a lab that is not up).
    exists_before_up: bool = False
    # DPDK binds its NIC to a user-space driver, which takes it from the kernel (no address,
    # no ping); hosts that share the kernel give DPDK an af_packet vdev over the kernel's NIC.
    dpdk_takes_nic: bool = True
    # Ansible runs on the hosts through Mitogen's strategy (one Python per host, not one per
    # task); a provider whose connection runs the controller's own Python gains nothing by it.
    ansible_mitogen: bool = True

    @classmethod
    def validate(cls, lab: Lab) -> list[tuple[int, str, str]]:
        """What only this provider can judge of a lab file, as (line, field, message): the
        topology loader's last stage. By default nothing: the machines' own kernels take
        or refuse each setting at `up`."""
        return []

    @abstractmethod
    def ansible_connection(self, host: str) -> dict:
        """The Ansible connection variables of `host` (ansible_connection, ansible_host, ...),
        plus any hpnlab_* variables that say how the host differs from lab.yml."""

    def using_inventory(self, path: str | Path | None) -> Provider:
        """This provider reading its machines from the inventory file `path` (None: the
        default); a provider whose machines are not in a user's inventory ignores it."""
        return self

    def prepare(self, progress: Progress = _quiet) -> None:    # noqa: B027 — a hook whose default is nothing
        """Work `up` needs that can run ahead of it, while nothing else waits (installing
        packages, building a box); nothing by default."""

    def switch_port(self, host: str, network: str) -> tuple[str | None, str] | None:
        """Where `host`'s frames on the LAN `network` enter the bridge that carries it:
        (network namespace on this machine, or None for this machine's own; the bridge
        port's name), for a lab that filters frames between hosts; None where there is none."""
        return None

    def begin_run(self, progress: Progress = _quiet) -> None:  # noqa: B027 — a hook whose default is nothing
        """A lab run on the lab's hosts starts (what a killed earlier run left may go first)."""

    def release_machine(self, progress: Progress = _quiet) -> list[str]:
        """Give back what provisioning took from this machine for the lab; what was given back."""
        return []

    # -- using a running lab --------------------------------------------------
    def hosts(self) -> dict[str, Host]:
        """The lab's hosts; each process they start is recorded in the lab's state."""
        state = self.state.read() or {}
        if not self._usable(state):
            raise ProviderError(f"lab {self.lab.name} is not up (run `hpnlab up`, provider {self.name})")

        def record(proc: dict) -> None:
            with self.state.update() as data:
                data.setdefault("processes", []).append(proc)
        return self._make_hosts(state, record)

    def _usable(self, state: dict) -> bool:
        """Whether the hosts of a lab with this state can be used (hosts() says why not)."""
        return self.is_up()

    def _hosts_during_up(self, state: dict) -> dict[str, Host]:
        """The hosts while `up`, which holds the lock and owns `state`, creates them."""
        def record(proc: dict) -> None:
            state.setdefault("processes", []).append(proc)
            self.state.write(state)
        return self._make_hosts(state, record)

    @abstractmethod
    def _make_hosts(self, state: dict, record: Callable[[dict], None]) -> dict[str, Host]:
        """Host objects for the lab's hosts, from its state; `record` keeps a started process."""

    def host(self, name: str) -> Host:
        hosts = self.hosts()
        if name not in hosts:
            raise ProviderError(f"no host {name!r} in lab {self.lab.name} (hosts: {', '.join(hosts)})")
        return hosts[name]

    def nic_of(self, host: str, wanted: str):
        """The NIC of `host` named by interface or network name (HOST:NIC of `capture`)."""
        spec = self.host(host).spec
        nic = next((n for n in spec.nics if wanted in (n.ifname, n.network)), None)
        if nic is None:
            raise ProviderError(f"host {host} has no NIC {wanted!r} (NICs: "
                                + ", ".join(f"{n.ifname}/{n.network}" for n in spec.nics) + ")")
        return nic

    @abstractmethod
    def shell_argv(self, host: str) -> list[str]:
        """The command that opens an interactive shell on `host`."""

    @abstractmethod
    def capture_argv(self, target: str, extra: list[str]) -> list[str]:
        """A tcpdump command for a network name or HOST:NIC, with extra tcpdump args."""

    # -- status: built on the Host API, so every provider reports the same shape --
    def status(self) -> dict:
        """{"up": bool, "hosts": [...], "networks": [...], ...} for `hpnlab status`."""
        state = self.state.read() or {}
        up = self.is_up()
        live_hosts = self.hosts() if up else {}
        hosts = []
        for name, spec in self.lab.hosts.items():
            live, sysctls = {}, {}
            host = live_hosts.get(name)
            if host is not None:
                try:
                    links = host.links()
                except CommandError:
                    links = {}
                live = {ifname: {"state": link.state, "mtu": link.mtu, "addrs": list(link.inet)}
                        for ifname, link in links.items()}
                if spec.sysctls:
                    r = host.run(["sysctl", "-n", *spec.sysctls], timeout=30, check=False)
                    sysctls = dict(zip(spec.sysctls, r.stdout.split("\n")))
            hosts.append({"name": name, "where": self._where(name, state), "role": spec.role,
                          "nics": [{"ifname": n.ifname, "network": n.network, "address": str(n.address),
                                    "mac": n.mac, "mtu": n.mtu, **live.get(n.ifname, {})} for n in spec.nics],
                          "sysctls": sysctls or spec.sysctls})
        networks = [{"name": n.name, "kind": n.kind, "subnet": str(n.subnet), "mtu": n.mtu,
                     "members": list(n.members), "impair": n.impair.describe(),
                     "mechanism": state.get("impairments", {}).get(n.name, "-" if not n.impair else "?")}
                    for n in self.lab.networks.values()]
        return {"lab": self.lab.name, "provider": self.name, "up": up, "hosts": hosts,
                "networks": networks, "processes": self._live_processes(state) if up else [],
                **self._status_extras(state)}

    @abstractmethod
    def _where(self, host: str, state: dict) -> str:
        """Where a host runs, for people: "netns lab-h1", "vm 192.168.121.10"."""

    def _live_processes(self, state: dict) -> list[dict]:
        return state.get("processes", [])

    def _status_extras(self, state: dict) -> dict:
        return {}


def provider_class(name: str) -> type[Provider]:
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        raise ProviderError(f"provider {name!r} is not available ({exc})") from None
    return module.PROVIDER


def open_lab(lab: str | Path | Lab = "lab.yml", provider: str | None = None) -> Provider:
    """The provider object of a lab file (up or not); `.hosts()` once it is up."""
    model = lab if isinstance(lab, Lab) else load_lab(lab, provider=provider)
    if provider and model.provider != provider:
        model = model.with_provider(provider)
    return provider_class(model.provider)(model)
