"""Each example lab's model (`Lab.to_dict()`: addresses, MACs, interface names, sysctls,
impairments) against its golden file in tests/topology/golden/. A change to the loader
that moves an address or renames a NIC shows here as a diff; a change meant to do that
rewrites the files: HPNLAB_UPDATE_GOLDEN=1 pytest tests/topology/test_golden_models.py"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hpnlab.topology import load_lab

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
EXAMPLES = sorted([REPO / "lab.yml", *REPO.glob("examples/*.yml"), *REPO.glob("labs/*/*.yml")])


def golden_path(lab_file: Path) -> Path:
    return GOLDEN / (str(lab_file.relative_to(REPO).with_suffix("")).replace("/", "__") + ".json")


@pytest.mark.parametrize("lab_file", EXAMPLES, ids=lambda p: str(p.relative_to(REPO)))
def test_example_lab_model_matches_its_golden_file(lab_file):
    model = json.dumps(load_lab(lab_file).to_dict(), indent=2, sort_keys=True) + "\n"
    path = golden_path(lab_file)
    if os.environ.get("HPNLAB_UPDATE_GOLDEN") == "1":
        path.write_text(model)
    assert path.exists(), f"no golden file for {lab_file}: HPNLAB_UPDATE_GOLDEN=1 writes it"
    assert model == path.read_text(), f"{lab_file}'s model differs from {path}"


def test_every_golden_file_has_its_lab():
    assert {p.name for p in GOLDEN.glob("*.json")} == {golden_path(f).name for f in EXAMPLES}
