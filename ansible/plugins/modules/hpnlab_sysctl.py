#!/usr/bin/python
"""Set sysctls (and optionally persist them in one sysctl.d file), idempotently."""
from __future__ import annotations

DOCUMENTATION = r"""
module: hpnlab_sysctl
short_description: Set a table of sysctls at once, read them back, optionally persist them
description:
  - Writes each key under /proc/sys whose value differs, then reads every key back and fails
    naming the key if the kernel did not take the value.
  - With O(persist), also writes all keys to one C(/etc/sysctl.d) file, so they survive a reboot.
  - Inside a network namespace (the hpnlab_netns connection) this sets the namespace's own copy.
options:
  values:
    description: Mapping of dotted sysctl key to value; whitespace inside values is normalised.
    type: dict
    required: true
  persist:
    description: Path of a sysctl.d file to write the keys to (omit to set at runtime only).
    type: path
author: hpnlab
"""

EXAMPLES = r"""
- name: Apply the server profile
  hpnlab_sysctl:
    values:
      net.core.somaxconn: 4096
    persist: /etc/sysctl.d/60-hpnlab.conf
"""

RETURN = r"""
keys:
  description: The keys whose runtime value was changed.
  type: list
  returned: always
"""

import os
import re

from ansible.module_utils.basic import AnsibleModule

PROC_SYS = "/proc/sys"
# The kernel's own sysctl names. hpnlab's loader checks keys too; this module checks them
# again because it also runs from inventories a user edits, with become.
KEY_RE = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")


def _norm(value) -> str:
    if isinstance(value, bool):
        value = int(value)
    return " ".join(str(value).split())


def sysctl_path(key) -> str:
    """The file of a sysctl key under /proc/sys; ValueError for anything else."""
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        raise ValueError(f"{key!r} is not a sysctl name (dotted words of [a-z0-9_-], e.g. net.core.somaxconn)")
    path = os.path.join(PROC_SYS, *key.split("."))
    real = os.path.realpath(path)
    if os.path.commonpath([real, PROC_SYS]) != PROC_SYS or real == PROC_SYS:
        raise ValueError(f"sysctl {key!r} resolves to {real}, outside {PROC_SYS}")
    return path


def main():
    module = AnsibleModule(argument_spec={"values": {"type": "dict", "required": True},
                                          "persist": {"type": "path"}},
                           supports_check_mode=True)
    values = {k: _norm(v) for k, v in module.params["values"].items()}
    paths = {}
    for key in values:      # every key checked before anything is written
        try:
            paths[key] = sysctl_path(key)
        except ValueError as exc:
            module.fail_json(msg=f"sysctl {exc}", key=key)
        if not os.path.isfile(paths[key]):      # missing, or a directory such as net.ipv4
            module.fail_json(msg=f"sysctl {key}: no such key on this host ({paths[key]})", key=key)
    changed_keys = []
    for key, want in values.items():
        path = paths[key]
        try:
            with open(path) as f:
                have = _norm(f.read())
        except OSError as exc:
            module.fail_json(msg=f"sysctl {key}: cannot read {path}: {exc.strerror}", key=key)
        if have == want:
            continue
        changed_keys.append(key)
        if module.check_mode:
            continue
        try:
            with open(path, "w") as f:
                f.write(want + "\n")
        except OSError as exc:
            module.fail_json(msg=f"sysctl {key}: cannot write {want!r}: {exc.strerror}", key=key)
        with open(path) as f:
            got = _norm(f.read())
        if got != want:
            module.fail_json(msg=f"sysctl {key}: wrote {want!r} but the kernel reads back {got!r}", key=key,
                             wanted=want, got=got)
    persisted = False
    persist = module.params["persist"]
    if persist:
        text = "# Written by hpnlab provisioning (kernel_tuning); edits are overwritten.\n" + "".join(
            f"{k} = {v}\n" for k, v in sorted(values.items()))
        try:
            with open(persist) as f:
                old = f.read()
        except FileNotFoundError:
            old = None
        if old != text:
            persisted = True
            if not module.check_mode:
                os.makedirs(os.path.dirname(persist), exist_ok=True)
                tmp = persist + ".tmp"
                with open(tmp, "w") as f:
                    f.write(text)
                os.replace(tmp, persist)
    # what changed, in the result's msg (hpnlab's event log and `provision` show it): a test of
    # idempotence can ask for exactly the drifted key, not only this task, changed
    said = [f"set {', '.join(changed_keys)}"] if changed_keys else []
    said += [f"wrote {persist}"] if persisted else []
    module.exit_json(changed=bool(changed_keys) or persisted, keys=changed_keys, persisted=persisted,
                     msg="; ".join(said))


if __name__ == "__main__":
    main()
