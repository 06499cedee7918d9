"""A skip list with spans (Redis's t_zset.c shape): ordered keys, O(log n) search,
insert, delete and rank, used for sorted sets (key = (score, member)) and as the
`skiplist` keyspace index (key = the key's bytes).

Each node has a tower of forward links; level i+1 links skip about 4x as far as
level i (P = 1/4). span[i] counts how many nodes a link at level i jumps over,
so the rank of a node is the sum of the spans walked to reach it.
"""
from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

MAX_LEVEL = 32
P = 0.25


class Node:
    __slots__ = ("key", "next", "span", "value")

    def __init__(self, key: Any, value: Any, level: int):
        self.key = key
        self.value = value
        self.next: list[Node | None] = [None] * level
        self.span = [0] * level


class SkipList:
    def __init__(self) -> None:
        self.head = Node(None, None, MAX_LEVEL)
        self.level = 1
        self.length = 0

    def __len__(self) -> int:
        return self.length

    @staticmethod
    def _random_level() -> int:
        level = 1
        while level < MAX_LEVEL and random.random() < P:
            level += 1
        return level

    def _path(self, key: Any) -> tuple[list[Node], list[int]]:
        """Per level, the last node with node.key < key, and its rank."""
        update: list[Node] = [self.head] * MAX_LEVEL
        rank = [0] * MAX_LEVEL
        x = self.head
        for i in range(self.level - 1, -1, -1):
            rank[i] = 0 if i == self.level - 1 else rank[i + 1]
            nxt = x.next[i]
            while nxt is not None and nxt.key < key:
                rank[i] += x.span[i]
                x = nxt
                nxt = x.next[i]
            update[i] = x
        return update, rank

    def find(self, key: Any) -> Node | None:
        node = self.first_ge(key)
        return node if node is not None and node.key == key else None

    def insert(self, key: Any, value: Any) -> Node:
        """Insert a key that is not in the list (the caller checks)."""
        update, rank = self._path(key)
        level = self._random_level()
        if level > self.level:
            for i in range(self.level, level):
                rank[i] = 0
                update[i] = self.head
                self.head.span[i] = self.length
            self.level = level
        node = Node(key, value, level)
        for i in range(level):
            prev = update[i]
            node.next[i] = prev.next[i]
            prev.next[i] = node
            node.span[i] = prev.span[i] - (rank[0] - rank[i])
            prev.span[i] = rank[0] - rank[i] + 1
        for i in range(level, self.level):
            update[i].span[i] += 1
        self.length += 1
        return node

    def delete(self, key: Any) -> bool:
        update, _ = self._path(key)
        x = update[0].next[0]
        if x is None or x.key != key:
            return False
        for i in range(self.level):
            prev = update[i]
            if prev.next[i] is x:
                prev.span[i] += x.span[i] - 1
                prev.next[i] = x.next[i]
            else:
                prev.span[i] -= 1
        while self.level > 1 and self.head.next[self.level - 1] is None:
            self.level -= 1
        self.length -= 1
        return True

    def rank(self, key: Any) -> int | None:
        """0-based rank of `key`, or None."""
        x = self.head
        r = 0
        for i in range(self.level - 1, -1, -1):
            nxt = x.next[i]
            while nxt is not None and nxt.key <= key:
                r += x.span[i]
                x = nxt
                nxt = x.next[i]
            if x is not self.head and x.key == key:
                return r - 1
        return None

    def at(self, rank: int) -> Node | None:
        """The node of 0-based rank `rank`."""
        if not 0 <= rank < self.length:
            return None
        x = self.head
        traversed = 0
        target = rank + 1
        for i in range(self.level - 1, -1, -1):
            nxt = x.next[i]
            while nxt is not None and traversed + x.span[i] <= target:
                traversed += x.span[i]
                x = nxt
                nxt = x.next[i]
            if traversed == target:
                return x
        return None

    def first_ge(self, key: Any) -> Node | None:
        """The first node with node.key >= key."""
        x = self.head
        for i in range(self.level - 1, -1, -1):
            nxt = x.next[i]
            while nxt is not None and nxt.key < key:
                x = nxt
                nxt = x.next[i]
        return x.next[0]

    def first_gt(self, key: Any) -> Node | None:
        x = self.head
        for i in range(self.level - 1, -1, -1):
            nxt = x.next[i]
            while nxt is not None and nxt.key <= key:
                x = nxt
                nxt = x.next[i]
        return x.next[0]

    def nodes_from(self, node: Node | None) -> Iterator[Node]:
        while node is not None:
            yield node
            node = node.next[0]

    def __iter__(self) -> Iterator[Any]:
        return (n.key for n in self.nodes_from(self.head.next[0]))


class SkipListIndex:
    """The keyspace on a skip list: key -> value, iterated in key order."""

    name = "skiplist"
    ordered = True

    def __init__(self) -> None:
        self.sl = SkipList()

    def get(self, key: bytes, default: Any = None) -> Any:
        node = self.sl.find(key)
        return default if node is None else node.value

    def __getitem__(self, key: bytes) -> Any:
        node = self.sl.find(key)
        if node is None:
            raise KeyError(key)
        return node.value

    def __setitem__(self, key: bytes, value: Any) -> None:
        node = self.sl.find(key)
        if node is None:
            self.sl.insert(key, value)
        else:
            node.value = value

    def __delitem__(self, key: bytes) -> None:
        if not self.sl.delete(key):
            raise KeyError(key)

    def pop(self, key: bytes, *default: Any) -> Any:
        node = self.sl.find(key)
        if node is None:
            if default:
                return default[0]
            raise KeyError(key)
        self.sl.delete(key)
        return node.value

    def __contains__(self, key: object) -> bool:
        return self.sl.find(key) is not None

    def __len__(self) -> int:
        return self.sl.length

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.sl)

    def clear(self) -> None:
        self.sl = SkipList()

    def items_from(self, start: bytes) -> Iterator[tuple[bytes, Any]]:
        """(key, value) in key order from the first key >= start."""
        return ((n.key, n.value) for n in self.sl.nodes_from(self.sl.first_ge(start)))

    def key_at(self, i: int) -> bytes:
        node = self.sl.at(i)
        assert node is not None
        return node.key
