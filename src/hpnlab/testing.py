"""Pytest fixtures for hpnlab labs: real network-namespace labs with unique names.

Load it with `pytest_plugins = ["hpnlab.testing"]` (the project's tests/conftest.py does):

    def test_x(netns_lab):            # the default lab.yml, up, shared by a module
        h1, h2 = netns_lab.host("h1"), netns_lab.host("h2")

    def test_y(lab_factory):          # any topology (text or path), torn down after the test
        lab = lab_factory(YAML_TEXT)
"""
from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

import pytest

from hpnlab.paths import repo_root
from hpnlab.providers import Provider, open_lab
from hpnlab.topology import load_lab, parse_lab

REPO = repo_root()
_serial = itertools.count(1)


def unique_lab_name(prefix: str = "t") -> str:
    return f"{prefix}{os.getpid() % 100000}x{next(_serial)}"


def write_lab_file(path: Path, name: str, source: str | Path = REPO / "lab.yml", provider: str = "netns") -> Path:
    """A copy of a lab file under another name and provider, for tests that drive the CLI
    (lab.yml's own provider is the VMs'; a test must not boot them by accident)."""
    text = Path(source).read_text()
    text = re.sub(r"(?m)^name:.*$", f"name: {name}", text, count=1)
    text = re.sub(r"(?m)^provider:.*$", f"provider: {provider}", text, count=1)
    path.write_text(text)
    return path


def _needs_root():
    if os.geteuid() != 0:
        pytest.skip("network-namespace labs need root")


class _Factory:
    def __init__(self, state_root: Path):
        self.state_root = state_root
        self.providers: list[Provider] = []

    def __call__(self, source: str | Path = REPO / "lab.yml", name: str | None = None, up: bool = True):
        name = name or unique_lab_name()
        if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source):
            lab = load_lab(source, provider="netns", name=name)
        else:
            lab = parse_lab(source, provider="netns", name=name)
        provider = open_lab(lab)
        provider.state = type(provider.state)(lab.name, self.state_root)
        self.providers.append(provider)
        if up:
            provider.up()
        return provider

    def teardown(self):
        for provider in reversed(self.providers):
            provider.down()


@pytest.fixture
def lab_factory(tmp_path):
    _needs_root()
    factory = _Factory(tmp_path / "state")
    yield factory
    factory.teardown()


@pytest.fixture(scope="module")
def netns_lab(tmp_path_factory):
    _needs_root()
    factory = _Factory(tmp_path_factory.mktemp("state"))
    yield factory()
    factory.teardown()
