"""`.lab/<lab>/state.json`: what a lab has created, kept private and under a lock.

The provider writes ahead: an object is recorded *before* it is created, so a
`kill -9` at any point leaves a state file that names everything `down` or
`cleanup` may have to remove.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import HpnlabError


def state_root() -> Path:
    return Path(os.environ.get("HPNLAB_STATE_DIR", ".lab")).resolve()


class LabBusy(HpnlabError, RuntimeError):
    hint = "wait for the other hpnlab command on this lab to finish, or end it"


class LabState:
    def __init__(self, lab: str, root: Path | None = None):
        self.dir = (root or state_root()) / lab
        self.path = self.dir / "state.json"
        self.lockfile = self.dir / "lock"
        self.logdir = self.dir / "logs"

    def read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None

    def write(self, data: dict) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=2, sort_keys=True)
        os.replace(tmp, self.path)

    @contextmanager
    def lock(self, timeout: float = 60.0):
        """Exclusive lock for a lifecycle step (up/down/cleanup) of this lab."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        fd = os.open(self.lockfile, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LabBusy(f"lab {self.dir.name} is busy: another hpnlab holds {self.lockfile}") from None
                    time.sleep(0.05)
            yield self
        finally:
            os.close(fd)

    @contextmanager
    def update(self):
        """Read-modify-write the state under the lock (short critical sections)."""
        with self.lock():
            data = self.read() or {}
            yield data
            self.write(data)

    def remove(self) -> None:
        for p in (self.path, self.path.with_suffix(".tmp")):
            p.unlink(missing_ok=True)

    def discard(self) -> None:
        """After `down`: drop the lock file and the lab's directory, leaving no trace."""
        self.lockfile.unlink(missing_ok=True)
        try:
            self.dir.rmdir()
        except OSError:
            pass


# -- the registry of live labs ---------------------------------------------------
# A lab's state file may sit in any state directory (HPNLAB_STATE_DIR, a test's tmp
# dir), so a global `hpnlab cleanup` could not tell a running lab from a leftover.
# Every `up` registers its lab in /run/hpnlab/labs/<provider>.<lab> (tmpfs: a reboot
# ends every lab with it); cleanup without --only keeps what this registry calls live.
LIVE_DIR = Path(os.environ.get("HPNLAB_RUN_DIR", "/run/hpnlab")) / "labs"


def register_live(provider: str, lab: str, state_path: Path) -> None:
    LIVE_DIR.mkdir(parents=True, exist_ok=True)
    (LIVE_DIR / f"{provider}.{lab}").write_text(json.dumps({"state": str(state_path), "pid": os.getpid()}))


def unregister_live(provider: str, lab: str) -> None:
    (LIVE_DIR / f"{provider}.{lab}").unlink(missing_ok=True)


def registered(provider: str) -> dict[str, dict]:
    """The provider's registered labs: name → {"state": its state file, "live": whether it
    is up (its state file says so) or coming up (the process running its `up` is alive),
    "coming_up": the latter alone}."""
    found = {}
    for entry in sorted(LIVE_DIR.glob(f"{provider}.*")) if LIVE_DIR.exists() else []:
        try:
            info = json.loads(entry.read_text())
        except (OSError, ValueError):
            info = {}
        try:
            phase = json.loads(Path(info["state"]).read_text()).get("phase")
        except (OSError, ValueError, KeyError):
            phase = None        # no state (yet: an `up` registers before it writes any)
        coming_up = pid_alive(int(info.get("pid") or 0))
        found[entry.name.removeprefix(f"{provider}.")] = {
            "state": Path(info["state"]) if info.get("state") else None,
            "live": phase == "up" or coming_up, "coming_up": coming_up}
    return found


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
