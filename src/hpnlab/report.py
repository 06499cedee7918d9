"""What every lab and benchmark report shares.

    out = results_dir("backlog")                  # results/backlog/20261126-153012/
    env = fingerprint(provider, ["net.core.somaxconn"])
    text = md_table(["backlog", "queue"], rows) + environment_md(env) + rerun_md(argv)
    write_report(out, text, data)                 # report.md + data.json

A report is for a person: tables, plots, the environment it ran on (kernel,
CPU, Python, provider, the hosts' sysctls) and the exact command to re-run it.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def results_dir(lab: str, root: str | Path | None = None, stamp: str | None = None) -> Path:
    """A fresh `results/<lab>/<stamp>/` directory (stamp: local time, seconds)."""
    root = Path(root or os.environ.get("HPNLAB_RESULTS", "results"))
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    path = root / lab / stamp
    n = 1
    while path.exists():                     # two runs in the same second
        n += 1
        path = root / lab / f"{stamp}-{n}"
    path.mkdir(parents=True)
    return path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def fingerprint(provider=None, sysctls: Iterable[str] = (), hosts: dict | None = None) -> dict:
    """The environment a run saw: this machine, and each lab host's kernel and sysctls."""
    env: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {"kernel": platform.release(), "cpu": _cpu_model(), "cpus": os.cpu_count(),
                    "python": sys.version.split()[0], "platform": platform.platform()},
        "provider": getattr(provider, "name", None),
        "lab": getattr(getattr(provider, "lab", None), "name", None),
        "hosts": {},
    }
    keys = list(sysctls)
    if hosts is None and provider is not None:
        try:
            hosts = provider.hosts()
        except Exception:       # the lab is not up: the machine part is still worth having
            hosts = {}
    for name, host in (hosts or {}).items():
        entry = {}
        try:
            entry["kernel"] = host.run(["uname", "-r"], timeout=10).stdout.strip()
            if keys:   # `sysctl k1 k2` prints "k = v" lines and skips unknown keys
                res = host.run(["sysctl", *keys], timeout=10, check=False)
                got = dict(line.split(" = ", 1) for line in res.stdout.splitlines() if " = " in line)
                entry["sysctls"] = {k: " ".join(got[k].split()) if k in got else "(absent)" for k in keys}
        except Exception as exc:  # noqa: BLE001 — a fingerprint never fails a run
            entry["error"] = str(exc)
        env["hosts"][name] = entry
    return env


def md_table(headers: Sequence[str], rows: Iterable[Sequence], align: str | None = None) -> str:
    """A GitHub-flavoured markdown table; numbers right-aligned unless `align` says (l/r/c each)."""
    rows = [["" if c is None else (f"{c:.3g}" if isinstance(c, float) else str(c)) for c in r] for r in rows]
    if align is None:
        align = "".join("r" if rows and all(_numeric(r[i]) for r in rows if i < len(r)) else "l"
                        for i in range(len(headers)))
    rule = {"l": ":---", "r": "---:", "c": ":---:"}
    out = ["| " + " | ".join(str(h) for h in headers) + " |",
           "|" + "|".join(rule[a] for a in align) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def _numeric(text: str) -> bool:
    try:
        float(text.replace("%", "").replace(",", ""))
        return True
    except ValueError:
        return text in ("", "-")


def environment_md(env: dict) -> str:
    m = env["machine"]
    lines = ["## Environment", "",
             f"- when: {env['when']}",
             f"- machine: kernel {m['kernel']}, {m['cpus']} × {m['cpu']}, Python {m['python']}",
             f"- lab: {env.get('lab')} on provider {env.get('provider')}"]
    for name, h in env.get("hosts", {}).items():
        sysctl = ", ".join(f"`{k}={v}`" for k, v in h.get("sysctls", {}).items())
        lines.append(f"- host {name}: kernel {h.get('kernel', '?')}" + (f"; {sysctl}" if sysctl else ""))
    return "\n".join(lines) + "\n"


def rerun_command(argv: Sequence[str] | None = None) -> str:
    """The command line that produced this run, as one shell-safe string."""
    argv = list(argv if argv is not None else sys.argv)
    if argv and argv[0].endswith(("/hpnlab", "__main__.py")):
        argv[0] = "hpnlab"
    return shlex.join(argv)


def rerun_md(argv: Sequence[str] | None = None, make_target: str | None = None) -> str:
    lines = ["## Re-run", "", "```sh"]
    if make_target:
        lines.append(f"make {make_target}")
    lines.append(rerun_command(argv))
    lines.append("```")
    return "\n".join(lines) + "\n"


def write_report(out: Path, markdown: str, data: dict | None = None) -> Path:
    """report.md (+ data.json) in `out`; returns the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.md"
    path.write_text(markdown)
    if data is not None:
        (out / "data.json").write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    return path
