"""A started process's files on an SSH host: a caller's label with blanks or shell
characters stays one plain word of the launch line (it broke `kv serve` on the VMs)."""
from __future__ import annotations

import shlex

from hpnlab.hosts.ssh import PROC_DIR, proc_base


def test_a_label_with_blanks_and_shell_characters_is_one_safe_word():
    base = proc_base("kv server; touch /tmp/x $(id) `id` 'q'")
    assert base.startswith(f"{PROC_DIR}/kv_server__touch__tmp_x")
    assert shlex.split(f"cat {base}.out") == ["cat", f"{base}.out"]
    assert all(c.isalnum() or c in "/_.-" for c in base)


def test_two_starts_of_one_label_get_their_own_files():
    assert proc_base("loadgen") != proc_base("loadgen")
