"""Providers turn the topology model into running hosts.

Each provider is one module with one class behind this small interface, in
the shape of netlab's providers: lifecycle hooks plus what the CLI needs
(status rows, a shell, a capture). `open_lab()` is how labs and tests get
the hosts of a running lab.
"""
from __future__ import annotations

import importlib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable

from ..hosts import Host
from ..state import LabState
from ..topology import Lab, load_lab

Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


class ProviderError(RuntimeError):
    """A lifecycle step failed; the message says what and what to do."""


class Provider(ABC):
    name: str = "?"

    def __init__(self, lab: Lab, state_root: Path | None = None):
        self.lab = lab
        self.state = LabState(lab.name, state_root)

    # -- lifecycle ---------------------------------------------------------
    @abstractmethod
    def up(self, progress: Progress = _quiet) -> bool:
        """Bring the lab up. Returns False (and changes nothing) if it already is."""

    @abstractmethod
    def down(self, progress: Progress = _quiet) -> None:
        """Remove everything the lab made, including processes it started."""

    @abstractmethod
    def is_up(self) -> bool: ...

    @classmethod
    @abstractmethod
    def cleanup(cls, progress: Progress = _quiet, lab: str | None = None) -> list[str]:
        """Find leftovers of hpnlab labs (all, or one) without trusting state; remove them."""

    # -- using a running lab --------------------------------------------------
    @abstractmethod
    def hosts(self) -> dict[str, Host]: ...

    def host(self, name: str) -> Host:
        hosts = self.hosts()
        if name not in hosts:
            raise ProviderError(f"no host {name!r} in lab {self.lab.name} (hosts: {', '.join(hosts)})")
        return hosts[name]

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
                r = host.run(["ip", "-j", "addr", "show"], timeout=30, check=False)
                for link in json.loads(r.stdout or "[]") if r.ok else []:
                    live[link["ifname"]] = {"state": link.get("operstate", "?"), "mtu": link.get("mtu"),
                                            "addrs": [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
                                                      if a.get("family") == "inet"]}
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
