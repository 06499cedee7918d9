"""Run Ansible modules inside a named network namespace on this machine."""
from __future__ import annotations

DOCUMENTATION = r"""
    name: hpnlab_netns
    short_description: run tasks inside a named network namespace on the controller
    description:
      - Every command runs as C(ip netns exec NAMESPACE /bin/sh -c CMD) on the machine that runs
        Ansible, so a hpnlab netns host sees its own NICs, addresses and per-namespace sysctls.
      - The namespace shares the machine's file system, so putting and fetching files are plain copies.
      - Needs root (or CAP_SYS_ADMIN) on the controller, like C(ip netns exec) itself.
    author: hpnlab
    version_added: "1.0.0"
    extends_documentation_fragment:
      - connection_pipelining
    options:
      netns:
        description: The network namespace to run in (C(/run/netns/NAME)); defaults to the inventory host name.
        type: str
        vars:
          - name: hpnlab_netns
          - name: ansible_host
      command_timeout:
        description: Seconds after which a single command is killed (0 = no limit).
        type: int
        default: 0
        vars:
          - name: hpnlab_netns_timeout
"""

import os
import shutil
import subprocess

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

display = Display()
NETNS_DIR = "/run/netns"


class Connection(ConnectionBase):
    """`ip netns exec` as an Ansible connection."""

    transport = "hpnlab_netns"
    has_pipelining = True
    default_user = "root"

    def _netns(self) -> str:
        name = self.get_option("netns") or self._play_context.remote_addr
        if not name or "/" in name:
            raise AnsibleConnectionFailure(f"hpnlab_netns: invalid namespace name {name!r}")
        return name

    def _connect(self):
        if not self._connected:
            name = self._netns()
            if not os.path.exists(os.path.join(NETNS_DIR, name)):
                raise AnsibleConnectionFailure(
                    f"network namespace {name!r} does not exist (is the lab up? `hpnlab up`)")
            if os.geteuid() != 0:
                raise AnsibleConnectionFailure(
                    f"entering network namespace {name!r} needs root: run as root or with sudo")
            display.vvv(f"ESTABLISH NETNS CONNECTION INTO {name}", host=self._play_context.remote_addr)
            self._connected = True
        return self

    def exec_command(self, cmd, in_data=None, sudoable=True):
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        self._connect()
        argv = ["ip", "netns", "exec", self._netns(), "/bin/sh", "-c", to_text(cmd)]
        display.vvv(f"EXEC {argv}", host=self._play_context.remote_addr)
        timeout = self.get_option("command_timeout") or None
        try:
            proc = subprocess.run(argv, input=in_data, capture_output=True, timeout=timeout,
                                  stdin=None if in_data is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise AnsibleError(f"command in namespace {self._netns()} timed out after {timeout}s") from exc
        except OSError as exc:
            raise AnsibleConnectionFailure(f"cannot run `ip netns exec`: {exc}") from exc
        return proc.returncode, proc.stdout, proc.stderr

    def put_file(self, in_path, out_path):
        super().put_file(in_path, out_path)
        display.vvv(f"PUT {in_path} TO {out_path}", host=self._play_context.remote_addr)
        if not os.path.exists(to_bytes(in_path, errors="surrogate_or_strict")):
            raise AnsibleFileNotFound(f"file or module does not exist: {in_path}")
        try:
            shutil.copyfile(to_bytes(in_path, errors="surrogate_or_strict"),
                            to_bytes(out_path, errors="surrogate_or_strict"))
        except OSError as exc:
            raise AnsibleError(f"failed to copy {in_path} to {out_path}: {exc}") from exc

    def fetch_file(self, in_path, out_path):
        super().fetch_file(in_path, out_path)
        display.vvv(f"FETCH {in_path} TO {out_path}", host=self._play_context.remote_addr)
        try:
            shutil.copyfile(to_bytes(in_path, errors="surrogate_or_strict"),
                            to_bytes(out_path, errors="surrogate_or_strict"))
        except OSError as exc:
            raise AnsibleError(f"failed to copy {in_path} to {out_path}: {exc}") from exc

    def close(self):
        self._connected = False
