"""The CLI's one error contract: every HpnlabError prints `hpnlab: message` and a
hint and exits with its status, with no traceback unless HPNLAB_DEBUG=1; only
the subcommand that runs is imported, so a broken one cannot take others down."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpnlab.errors import HpnlabError
from hpnlab.inventory import InventoryError
from hpnlab.labs._kit import LabError
from hpnlab.providers import ProviderError
from hpnlab.state import LabBusy
from hpnlab.topology import TopologyError

REPO = Path(__file__).resolve().parents[2]
INVALID = REPO / "tests/topology/invalid/wrong_type.yml"


def python(code: str, *, debug: bool = False, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HPNLAB_DEBUG"}
    if debug:
        env["HPNLAB_DEBUG"] = "1"
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=60)


def hpnlab(*argv: str, **kw) -> subprocess.CompletedProcess:
    return python(f"import sys; from hpnlab.cli import main; sys.exit(main({list(argv)!r}))", **kw)


def test_every_error_class_is_an_hpnlab_error():
    from hpnlab.bench.loadgen import LoadgenError
    from hpnlab.hosts import CommandError
    from hpnlab.machine import MachineError
    from hpnlab.servers import EngineError
    from hpnlab.uring import UringUnavailable
    from hpnlab.vm import VmError
    for cls in (TopologyError, ProviderError, LabBusy, InventoryError, LoadgenError, LabError, CommandError,
                MachineError, EngineError, UringUnavailable, VmError):
        assert issubclass(cls, HpnlabError), cls


def test_an_invalid_lab_file_gets_message_hint_and_status_without_traceback():
    proc = hpnlab("--lab", str(INVALID), "status")
    assert proc.returncode == 2
    assert "hpnlab: invalid lab file:" in proc.stderr and ":5: hosts.h1.cpus: must be an integer" in proc.stderr
    assert "hint: " in proc.stderr and "Traceback" not in proc.stderr


def test_hpnlab_debug_shows_the_traceback():
    proc = hpnlab("--lab", str(INVALID), "status", debug=True)
    assert proc.returncode == 2 and "Traceback (most recent call last)" in proc.stderr
    assert "hpnlab: invalid lab file:" in proc.stderr


def test_a_command_error_with_its_own_hint(tmp_path):
    """An error raised deep in a command (the static inventory) reaches the user as message + hint."""
    (tmp_path / "inventory").mkdir()
    (tmp_path / "inventory/static.yml").write_text("all:\n  hosts:\n    h1: {ansible_host: 192.0.2.1}\n")
    proc = hpnlab("--lab", str(REPO / "lab.yml"), "--provider", "static", "verify", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "hpnlab: host h2: not in the static inventory" in proc.stderr
    assert "hint: fix the inventory file" in proc.stderr and "Traceback" not in proc.stderr


def test_a_bug_is_one_line_and_a_hint():
    code = ("import sys; import hpnlab.cli.status as s\n"
            "def boom(args): raise KeyError('oops')\n"
            "s.run = boom\n"
            f"from hpnlab.cli import main; sys.exit(main(['--lab', {str(REPO / 'lab.yml')!r}, 'status']))")
    proc = python(code)
    assert proc.returncode == 1
    assert "hpnlab: internal error: KeyError: 'oops'" in proc.stderr and "HPNLAB_DEBUG=1" in proc.stderr
    assert "Traceback" not in proc.stderr


STATUS = ("from hpnlab.cli import main\n"
          f"rc = main(['--lab', {str(REPO / 'lab.yml')!r}, '--provider', 'netns', 'status', '--json'])\n")


def test_only_the_running_subcommand_is_imported(tmp_path):
    code = (f"import os, sys; os.environ['HPNLAB_STATE_DIR'] = {str(tmp_path)!r}\n" + STATUS +
            "print(sorted(m for m in sys.modules if m.startswith(('hpnlab.cli.', 'hpnlab.labs'))\n"
            "             and not m.startswith('hpnlab.cli._')))\n"
            "sys.exit(rc)")
    proc = python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "['hpnlab.cli.status']", proc.stdout


@pytest.mark.parametrize("broken", ["hpnlab.cli.lab", "hpnlab.labs"])
def test_a_broken_subcommand_leaves_the_others_working(broken, tmp_path):
    poison = f"import sys; sys.modules[{broken!r}] = None\n"    # importing it now raises ImportError
    lab = str(REPO / "lab.yml")
    ok = python(poison + f"import os; os.environ['HPNLAB_STATE_DIR'] = {str(tmp_path)!r}\n" + STATUS +
                "sys.exit(rc)")
    assert ok.returncode == 0 and '"up": false' in ok.stdout, ok.stderr
    helped = python(poison + "from hpnlab.cli import main; main(['--help'])")
    assert " lab " in helped.stdout and "down" in helped.stdout
    bad = python(poison + f"from hpnlab.cli import main; sys.exit(main(['--lab', {lab!r}, 'lab', 'p2p']))")
    assert bad.returncode == 1, bad.stderr
    assert "hpnlab: the `lab` command cannot load: ModuleNotFoundError" in bad.stderr, bad.stderr
    assert "hint: the other commands still work" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("argv", [["lab", "--help"], ["kv", "lab", "--help"], ["ustack", "lab", "--help"],
                                  ["pktgen", "--help"]])
def test_every_lab_command_prints_its_help(argv):
    """argparse %-formats help texts: a bare % in any lab's HELP crashed `hpnlab lab --help`."""
    r = subprocess.run([sys.executable, "-m", "hpnlab.cli", *argv], capture_output=True, text=True, timeout=60,
                       cwd=REPO)
    assert r.returncode == 0 and "--up" in r.stdout, r.stderr


# Bad arguments of every command: refused before the lab is even opened (its file here does not
# exist), with a message naming the argument and the usage or a hint; never a traceback or a bug.
BAD_ARGUMENTS = [
    (["exec", "--timeout", "nan", "h1", "--", "true"], "argument --timeout: must be a number > 0"),
    (["exec", "--timeout", "-1", "h1", "--", "true"], "argument --timeout: must be a number > 0"),
    (["verify", "--port", "99999"], "argument --port: must be a port 1 to 65535"),
    (["capture", "data", "-c", "-5"], "argument -c/--count: must be an integer > 0"),
    (["bench", "--duration", "inf"], "argument --duration: must be a number > 0"),
    (["bench", "--depth", "0"], "argument --depth: must be an integer > 0"),
    (["bench", "--engines", "nope"], "hpnlab: --engines: unknown engine(s) nope"),
    (["bench", "--conns", "x"], "hpnlab: --conns/--sizes/--workers: expected comma-separated integers"),
    (["kv", "serve", "--port", "0"], "argument --port: must be a port 1 to 65535"),
    (["kv", "lab", "--fake-runs", "-1"], "hpnlab: --fake-runs -1: must be >= 0"),
    (["ustack", "lab", "--bytes", "-1"], "argument --bytes: must be an integer > 0"),
    (["lab", "p2p", "--spacing", "nan"], "argument --spacing: must be a number >= 0"),
    (["lab", "rudp", "--loss-pct", "nan"], "argument --loss-pct: must be a finite number"),
    (["lab", "nat", "--deadline", "inf"], "argument --deadline: must be 'auto' or 0.05 to 60 seconds (got inf)"),
    (["lab", "nope"], "argument NAME: invalid choice"),
    (["lab", "p2p", "--tries", "0"], "argument --tries: must be an integer > 0"),
    (["lab", "p2p", "--port", "99999"], "argument --port: must be a port 1 to 65535"),
    (["lab", "backlog", "--backlogs", "1,x"], "argument --backlogs: 'x' is not an integer"),
    (["lab", "epoll", "--mib", "-1"], "argument --mib: must be a number > 0"),
    (["graph", "-o", "x.txt"], "hpnlab: --output must end in .png or .svg"),
    # '' made the vagrant cleanup match every lab's VMs, live ones included
    (["cleanup", "--only", ""], "argument --only: '' is not a lab name"),
    (["cleanup", "--only", "../x"], "argument --only: '../x' is not a lab name"),
]


@pytest.mark.parametrize("argv, said", BAD_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_ARGUMENTS])
def test_bad_arguments_are_named_without_a_traceback(argv, said, tmp_path, monkeypatch, capsys):
    from hpnlab.cli import main
    lab = tmp_path / "lab.yml"
    lab.write_text((REPO / "lab.yml").read_text().replace("name: hpnlab", "name: t11args"))
    monkeypatch.setenv("HPNLAB_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("HPNLAB_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    try:
        rc = main(["--lab", str(lab), "--provider", "netns", *argv])
    except SystemExit as exc:       # argparse's own error: usage and message, status 2
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2 and said in err, err
    assert ("hint: " in err or "usage: " in err) and "Traceback" not in err and "internal error" not in err
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("name, data, said", [
    ("dump.rdb", b"REDIS0011garbage", "dump.rdb: truncated at byte 12"),
    ("appendonly.aof", b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$999\r\nxx", "appendonly.aof: ends inside a command"),
])
def test_kv_serve_with_a_damaged_file_says_which(name, data, said, tmp_path, capsys, monkeypatch):
    """The store's persistence errors are the CLI's kind: file and byte, a hint, exit 1 (they were
    internal errors: a bug report for a damaged file)."""
    from hpnlab.cli import main
    monkeypatch.delenv("HPNLAB_DEBUG", raising=False)
    (tmp_path / name).write_bytes(data)
    rc = main(["kv", "serve", "--dir", str(tmp_path), "--port", "16398", "--appendonly",
               "yes" if name.endswith(".aof") else "no"])
    err = capsys.readouterr().err
    assert rc == 1 and said in err and "hint: " in err, err
    assert "internal error" not in err and "Traceback" not in err


def test_ustack_serve_refusals_are_the_clis_kind(capsys, monkeypatch):
    """The stack's own SystemExit(message) (it also runs as a host's agent) becomes hpnlab's error."""
    from hpnlab.cli import main
    monkeypatch.delenv("HPNLAB_DEBUG", raising=False)
    rc = main(["ustack", "serve", "--ifname", "hpnlabnone0", "--ip", "x"])
    err = capsys.readouterr().err
    assert rc == 1 and "hpnlab: --ip 'x': an address with a prefix length" in err and "hint: " in err, err
