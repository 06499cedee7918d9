"""The `hash` keyspace index: Python's dict (open addressing, as Redis's dict is chaining).
O(1) get/set; no key order, so RANGE is refused and SCAN walks insertion order."""
from __future__ import annotations

from itertools import islice
from typing import Any


class HashIndex(dict):
    name = "hash"
    ordered = False

    def key_at(self, i: int) -> Any:
        return next(islice(iter(self), i, None))
