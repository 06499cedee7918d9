"""Keyspace indexes (course §9.1 如何在 kvstore 中实现范围查询): one module each, one interface.

An index maps key bytes to a value like a dict: get, [], []=, del, pop, in, len,
iter, clear, key_at(i) (RANDOMKEY). Ordered ones (`ordered = True`) iterate in
key order and add items_from(start), which RANGE and SCAN walk.

    hash      dict: O(1), unordered
    array     two sorted arrays: O(log n) lookup, O(n) insert/delete
    rbtree    red-black tree: O(log n) everything
    skiplist  skip list with spans: O(log n) expected (sorted sets use it too)
"""
from __future__ import annotations

from typing import Any

from .array import ArrayIndex
from .hash import HashIndex
from .rbtree import RBTreeIndex
from .skiplist import SkipListIndex

INDEXES: dict[str, Any] = {
    "hash": HashIndex,
    "array": ArrayIndex,
    "rbtree": RBTreeIndex,
    "skiplist": SkipListIndex,
}


def new_index(name: str) -> Any:
    if name not in INDEXES:
        raise ValueError(f"unknown index {name!r} (valid: {', '.join(INDEXES)})")
    return INDEXES[name]()
