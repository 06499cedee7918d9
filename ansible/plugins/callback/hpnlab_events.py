"""Write one JSON line per playbook event to $HPNLAB_EVENTS, for `hpnlab provision`."""
from __future__ import annotations

DOCUMENTATION = r"""
    name: hpnlab_events
    type: notification
    short_description: JSON-lines events (task start, per-host result, recap) for hpnlab
    description:
      - Appends one JSON object a line to the file named by the HPNLAB_EVENTS environment variable
        (nothing happens without it). C(hpnlab provision) reads it to show progress, name the failing
        host and reason, count changes and collect the (small) facts the roles set, such as dpdk_testpmd.
    requirements:
      - enable in callbacks_enabled (hpnlab provision does so through ANSIBLE_CALLBACKS_ENABLED)
"""

import json
import os
import time

from ansible.plugins.callback import CallbackBase


def _rescued(task) -> bool:
    """A failure inside a block that has a rescue section is handled by the play."""
    parent = getattr(task, "_parent", None)
    while parent is not None:
        if getattr(parent, "rescue", None):
            return True
        parent = getattr(parent, "_parent", None)
    return False


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "hpnlab_events"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        path = os.environ.get("HPNLAB_EVENTS")
        self._out = open(path, "a", buffering=1) if path else None
        self._task_started = {}

    def _emit(self, **event):
        if self._out:
            event["t"] = round(time.time(), 3)
            self._out.write(json.dumps(event, default=str) + "\n")

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._task_started[task._uuid] = time.time()
        self._emit(event="task", task=task.get_name(), role=task._role.get_name() if task._role else None)

    def _result(self, status, result):
        res = result._result
        task = result._task
        facts = {k: v for k, v in (res.get("ansible_facts") or {}).items()
                 if not k.startswith(("ansible_", "discovered_")) and len(json.dumps(v, default=str)) < 4096}
        msg = res.get("msg") or ""
        if status in ("failed", "unreachable"):
            # a module that never ran (e.g. `become` without sudo) says why only in module_stderr
            err = (res.get("stderr") or res.get("module_stderr") or res.get("module_stdout") or "").strip()
            if res.get("module_stderr") is not None:
                msg = msg.splitlines()[0] if msg else msg     # drop "See stdout/stderr ...": err is here
            if err and err not in msg:
                msg = f"{msg}: {err}" if msg else err
            if not msg:
                msg = (res.get("stdout") or "").strip()[-500:]
        started = self._task_started.get(task._uuid)
        self._emit(event="result", status=status, host=result._host.get_name(), task=task.get_name(),
                   role=task._role.get_name() if task._role else None,
                   changed=bool(res.get("changed")), msg=str(msg)[:2000], facts=facts,
                   seconds=round(time.time() - started, 3) if started else None)

    def v2_runner_on_ok(self, result):
        self._result("changed" if result._result.get("changed") else "ok", result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._result("ignored" if ignore_errors else "rescued" if _rescued(result._task) else "failed", result)

    def v2_runner_on_unreachable(self, result):
        self._result("unreachable", result)

    def v2_runner_on_skipped(self, result):
        self._result("skipped", result)

    def v2_playbook_on_stats(self, stats):
        hosts = sorted(stats.processed.keys())
        self._emit(event="stats", hosts={h: stats.summarize(h) for h in hosts})
        if self._out:
            self._out.close()
            self._out = None
