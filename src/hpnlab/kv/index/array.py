"""The `array` keyspace index: two parallel arrays kept sorted by key.

Lookup is a binary search (O(log n)); insert and delete shift the tail (O(n)
memmove, fast in C for the sizes of a lab). Ordered: RANGE is a slice.
"""
from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any


class ArrayIndex:
    name = "array"
    ordered = True

    def __init__(self) -> None:
        self.keys: list[bytes] = []
        self.vals: list[Any] = []

    def _find(self, key: bytes) -> int:
        i = bisect_left(self.keys, key)
        return i if i < len(self.keys) and self.keys[i] == key else -1

    def get(self, key: bytes, default: Any = None) -> Any:
        i = self._find(key)
        return default if i < 0 else self.vals[i]

    def __getitem__(self, key: bytes) -> Any:
        i = self._find(key)
        if i < 0:
            raise KeyError(key)
        return self.vals[i]

    def __setitem__(self, key: bytes, value: Any) -> None:
        keys = self.keys
        i = bisect_left(keys, key)
        if i < len(keys) and keys[i] == key:
            self.vals[i] = value
        else:
            keys.insert(i, key)
            self.vals.insert(i, value)

    def pop(self, key: bytes, *default: Any) -> Any:
        i = self._find(key)
        if i < 0:
            if default:
                return default[0]
            raise KeyError(key)
        del self.keys[i]
        return self.vals.pop(i)

    def __delitem__(self, key: bytes) -> None:
        self.pop(key)

    def __contains__(self, key: object) -> bool:
        return self._find(key) >= 0  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[bytes]:
        return iter(list(self.keys))

    def clear(self) -> None:
        self.keys, self.vals = [], []

    def items_from(self, start: bytes) -> Iterator[tuple[bytes, Any]]:
        i = bisect_left(self.keys, start)
        while i < len(self.keys):
            yield self.keys[i], self.vals[i]
            i += 1

    def key_at(self, i: int) -> bytes:
        return self.keys[i]
