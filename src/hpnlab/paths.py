"""Where the checkout is: the one place that finds it."""
from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The checkout holding the Vagrantfile, box/, ansible/ and tests/ (HPNLAB_ROOT overrides;
    an installed copy outside a checkout gets the working directory)."""
    env = os.environ.get("HPNLAB_ROOT")
    if env:
        return Path(env).resolve()
    for parent in Path(__file__).resolve().parents:
        if (parent / "Vagrantfile").is_file() and (parent / "box").is_dir():
            return parent
    return Path.cwd()
