"""Fuzz the lab-file loader: mutations of the default lab.yml and the example labs
(wrong types, missing and unknown keys, odd strings and numbers, complex keys,
bytes that are not UTF-8, broken YAML). Every input either loads or raises the
loader's TopologyError with `file:line:` problems — never any other exception,
never a traceback for the user.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpnlab.errors import HpnlabError
from hpnlab.topology import TopologyError
from hpnlab.topology.loader import decode, parse_lab

REPO = Path(__file__).resolve().parents[2]
VALID = [REPO / "lab.yml", *sorted((REPO / "examples").glob("*.yml")), *sorted((REPO / "labs").glob("*/*.yml"))]
SEED_TEXTS = [p.read_bytes() for p in VALID + sorted((REPO / "tests/topology/invalid").glob("*.yml"))]
SEED_TREES = [yaml.safe_load(p.read_text()) for p in VALID]
PROBLEM = re.compile(r"^fuzz\.yml:(\d+|--provider):")
FUZZ = settings(max_examples=2000, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

odd_text = st.one_of(
    st.sampled_from(["", " ", "auto", "h1", "data", "-1", "0x10", "1e999", "nan", ".inf", "10ms", "1gbit", "100%",
                     "/etc/hostname", "../../etc/x", "net.ipv4/../../x", "net.core.somaxconn", "eth1",
                     "10.77.1.0/24", "10.77.1.1", "::1", "300.1.1.1", "10.77.0.0/33", "2M", "1G", "~", "yes",
                     "a" * 300, "é", "\u202e", "line\nbreak", "tab\there", "null"]),
    st.text(max_size=20))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10**30), max_value=10**30),
                    st.floats(), odd_text)
keys = st.one_of(odd_text, st.integers(), st.none(), st.booleans())
containers = st.one_of(st.lists(scalars, max_size=3), st.dictionaries(keys, scalars, max_size=3))
values = st.one_of(scalars, containers, st.lists(containers, max_size=2), st.dictionaries(keys, containers, max_size=2))
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def must_load_or_refuse(text: str) -> None:
    try:
        parse_lab(text, "fuzz.yml")
    except TopologyError as exc:
        assert isinstance(exc, HpnlabError) and exc.exit_code == 2
        for problem in exc.problems:
            assert PROBLEM.match(problem), problem


def paths(node, prefix=()):
    """Every place in a tree a mutation can touch: (path to the container, key or index)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield prefix, k
            yield from paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield prefix, i
            yield from paths(v, prefix + (i,))


def at(tree, path):
    for k in path:
        tree = tree[k]
    return tree


@st.composite
def mutated_trees(draw):
    tree = copy.deepcopy(draw(st.sampled_from(SEED_TREES)))
    for _ in range(draw(st.integers(1, 3))):
        places = list(paths(tree))
        if not places:
            break
        where, key = draw(st.sampled_from(places))
        parent = at(tree, where)
        action = draw(st.sampled_from(["replace", "delete", "add", "rename"]))
        if action == "replace":
            parent[key] = draw(values)
        elif action == "delete":
            del parent[key]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(keys)] = draw(values)
        elif action == "add":
            parent.append(draw(values))
        elif isinstance(parent, dict):
            parent[draw(odd_text)] = parent.pop(key)
    return yaml.dump(tree, Dumper=DUMPER, sort_keys=False, allow_unicode=draw(st.booleans()))


SNIPPETS = [b"? [a, b]\n: 1\n", b"? {a: 1}\n: x\n", b"&a [*a]\n", b"x: !!python/object:os.system ls\n",
            b"<<: *nowhere\n", b"\t- tab\n", b"---\n---\n", b"%YAML 1.1\n", b"x: !!binary aGVsbG8=\n",
            b"d: 2024-02-30\n", b"n: " + b"9" * 5000 + b"\n", b"s: !!set {a, b}\n", b"o: !!omap [a: 1]\n",
            b"hosts: 7\n", b"networks: [a]\n", b"profiles: 3\n", b"vm: {management_subnet: 1.2.3.4/99}\n",
            b"  sysctls: {/etc/hostname: x}\n", b"\xff\xfe", b"\xc3\x28", b"\x00", b"\x85", b"\xef\xbb\xbf",
            b"[" * 200, b"{" * 200, b"key: 'unterminated\n", b"'\n"]


@st.composite
def mutated_bytes(draw):
    data = bytearray(draw(st.sampled_from(SEED_TEXTS)))
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["insert", "snippet", "delete", "line", "truncate"]))
        if action == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=6))
        elif action == "snippet":
            line_start = data.rfind(b"\n", 0, pos) + 1
            data[line_start:line_start] = draw(st.sampled_from(SNIPPETS))
        elif action == "delete":
            del data[pos:pos + draw(st.integers(1, 40))]
        elif action == "line":     # duplicate a line (duplicate keys, wrong indentation)
            start = data.rfind(b"\n", 0, pos) + 1
            end = data.find(b"\n", pos)
            end = len(data) if end < 0 else end + 1
            data[end:end] = b" " * draw(st.integers(0, 3)) + data[start:end]
        else:
            del data[pos:]
    return bytes(data)


@FUZZ
@given(mutated_trees())
def test_mutated_lab_trees_load_or_refuse(text):
    must_load_or_refuse(text)


@FUZZ
@given(mutated_bytes())
def test_mutated_lab_bytes_load_or_refuse(data):
    try:
        text = decode(data, "fuzz.yml")
    except TopologyError as exc:
        assert PROBLEM.match(exc.problems[0]) and "not UTF-8" in exc.problems[0]
        return
    must_load_or_refuse(text)


@pytest.mark.parametrize("seed", VALID, ids=[p.name for p in VALID])
def test_seeds_load(seed):
    """The tree mutations start from labs that load."""
    parse_lab(seed.read_text(), "fuzz.yml")
