"""Fabric's Connection through a ProxyCommand (a jump host: `ip netns exec NS nc …`, `ssh -W`)
whose end ends the connection at once.

paramiko's ProxyCommand reads the command's ended output again and again until its timeout:
a machine behind a jump host that does not answer (the jump host's `nc` exits at once,
refused) took 15 s of busy reads to report, and then only as "No existing session". Here
the command's end is a ProxyCommandFailure with what the command said on stderr.
Imported only when a connection is opened (paramiko and Fabric are slow to import).
"""
from __future__ import annotations

import logging
import os
from select import select

import paramiko
from fabric import Connection
from paramiko.ssh_exception import ProxyCommandFailure

# paramiko's transport thread logs a failed connection's exception with its traceback at ERROR;
# with no logging set up, Python's last-resort handler printed that to the user's terminal
# above hpnlab's own message. The same exception reaches the caller, who reports it.
logging.getLogger("paramiko.transport").addHandler(logging.NullHandler())


class EndingProxyCommand(paramiko.ProxyCommand):
    def recv(self, size: int) -> bytes:
        # a socket's recv: what is there (up to size), waiting at most the timeout for it
        if not select([self.process.stdout], [], [], self.timeout)[0]:
            raise TimeoutError()            # socket.timeout, what paramiko waits for
        try:
            data = os.read(self.process.stdout.fileno(), size)
        except OSError as exc:
            raise ProxyCommandFailure(" ".join(self.cmd), exc.strerror) from None
        if not data:
            # the command ended (or closed its output): what it said went to stderr first;
            # read without waiting for its exit, which paramiko's close() signals (not reaped here)
            said = b""
            if select([self.process.stderr], [], [], 0.5)[0]:
                said = os.read(self.process.stderr.fileno(), 4096)
            raise ProxyCommandFailure(" ".join(self.cmd), said.decode(errors="replace").strip()
                                      or "it closed the connection")
        return data


class ProxiedConnection(Connection):
    def open_gateway(self):
        if isinstance(self.gateway, str):
            # SshHost gives the command with %h %p %r filled in (hosts.ssh.proxy_command)
            return EndingProxyCommand(self.gateway)
        return super().open_gateway()
