"""Which sysctl keys exist, and which of them a network namespace owns.

A lab host on the netns provider only gets its own copy of the per-namespace
keys (most of net.ipv4.*, net.core.somaxconn, ...). Keys such as
net.core.rmem_max or vm.* belong to the whole machine, so lab.yml must put
them under `machine.sysctls`. The per-namespace set is read from a throw-away
namespace that dies with the child process that made it: nothing is left.
"""
from __future__ import annotations

import ctypes
import functools
import os
import re
from pathlib import Path

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
PROC_SYS = Path("/proc/sys")
# The kernel's own sysctl names: dotted words of [a-z0-9_-]. Nothing else can name a
# file: no '/', no '..', no absolute path (pathlib would drop /proc/sys for one).
KEY_RE = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")


def key_problem(key) -> str | None:
    """Why `key` is not a sysctl name (None if it is one)."""
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        return (f"{key!r} is not a sysctl name: dotted words of lower-case letters, digits, "
                "'_' and '-' (e.g. net.core.somaxconn)")
    return None


def key_to_path(key: str, root: Path = PROC_SYS) -> Path:
    """The file under `root` (/proc/sys) for a sysctl key; ValueError for anything that is
    not a sysctl name or that resolves outside `root`."""
    problem = key_problem(key)
    if problem:
        raise ValueError(problem)
    path = root.joinpath(*key.split("."))
    real, top = os.path.realpath(path), os.path.realpath(root)
    if os.path.commonpath([real, top]) != top or real == top:
        raise ValueError(f"sysctl {key!r} resolves to {real}, outside {top}")
    return path


def normalise(key: str, ifnames: tuple[str, ...] = ()) -> str:
    """Device keys name a NIC that may not exist yet: check them as `default`."""
    parts = key.split(".")
    if len(parts) >= 4 and parts[0] == "net" and parts[2] in ("conf", "neigh") and parts[3] in ifnames:
        parts[3] = "default"
    return ".".join(parts)


def exists(key: str) -> bool:
    """A valid key naming a file under /proc/sys (or a per-namespace key)."""
    try:
        return key_to_path(key).is_file() or key in netns_keys()
    except ValueError:
        return False


@functools.cache
def netns_keys() -> frozenset[str]:
    """Keys writable in a fresh network namespace (the per-namespace ones)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: unshare, list, exit — the namespace goes with us
        try:
            os.close(read_fd)
            libc = ctypes.CDLL(None, use_errno=True)
            flags = CLONE_NEWNET if os.geteuid() == 0 else CLONE_NEWNET | CLONE_NEWUSER
            if libc.unshare(flags) != 0:
                os._exit(1)
            keys: list[str] = []
            for dirpath, _dirs, files in os.walk("/proc/sys/net"):
                rel = os.path.relpath(dirpath, "/proc/sys").replace("/", ".")
                # newer kernels show machine-wide keys (rmem_max, ...) read-only here
                keys.extend(f"{rel}.{f}" for f in files
                            if os.stat(os.path.join(dirpath, f)).st_mode & 0o200)
            with os.fdopen(write_fd, "w") as out:
                out.write("\n".join(keys))
            os._exit(0)
        except BaseException:
            os._exit(1)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        # Cannot make a namespace here (no privileges): fall back to "anything under net.*
        # except net.core's machine-wide buffers", which is right for current kernels.
        return frozenset()
    return frozenset(data.split("\n")) if data else frozenset()


def per_netns(key: str) -> bool:
    keys = netns_keys()
    if not keys:
        return key.startswith("net.") and not key.startswith(("net.core.rmem", "net.core.wmem",
                                                              "net.core.optmem", "net.core.netdev"))
    return key in keys


def lab_problems(lab, namespaces: bool, names: frozenset[str] | None = None,
                 kernel: str = "this kernel") -> list[tuple[int, str, str]]:
    """(line, field, message) for each sysctl of `lab` that the kernel lacks: the one whose
    sysctl `names` are given, else this machine's; `namespaces`: a host's own sysctls must
    also be per network namespace (the hosts share this kernel)."""
    problems = []
    for s in lab.sysctl_sources:
        ifnames = tuple(n.ifname for n in lab.hosts[s.host].nics) if s.host else ()
        key = normalise(s.key, ifnames or tuple(f"eth{i}" for i in range(1, 10)))
        if not (key in names if names is not None else exists(key)):
            problems.append((s.line, s.field, f"no such sysctl on {kernel}"))
        elif namespaces and s.per_host and not per_netns(key):
            problems.append((s.line, s.field,
                             "is machine-wide, not per network namespace: put it under machine.sysctls"))
    return problems
