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

from ansible.module_utils.basic import AnsibleModule


def _norm(value) -> str:
    if isinstance(value, bool):
        value = int(value)
    return " ".join(str(value).split())


def _path(key: str) -> str:
    return os.path.join("/proc/sys", *key.split("."))


def main():
    module = AnsibleModule(argument_spec={"values": {"type": "dict", "required": True},
                                          "persist": {"type": "path"}},
                           supports_check_mode=True)
    values = {k: _norm(v) for k, v in module.params["values"].items()}
    changed_keys = []
    for key, want in values.items():
        path = _path(key)
        try:
            with open(path) as f:
                have = _norm(f.read())
        except FileNotFoundError:
            module.fail_json(msg=f"sysctl {key}: no such key on this host ({path})", key=key)
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
    module.exit_json(changed=bool(changed_keys) or persisted, keys=changed_keys, persisted=persisted)


if __name__ == "__main__":
    main()
