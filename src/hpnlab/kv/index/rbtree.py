"""The `rbtree` keyspace index: a red-black tree (CLRS), ordered by key.

Every path from the root to a leaf has the same number of black nodes and no
red node has a red child, so the height stays <= 2 log2(n+1): O(log n) get,
insert and delete, and an in-order walk gives keys sorted (RANGE, SCAN).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

RED, BLACK = True, False


class RBNode:
    __slots__ = ("color", "key", "left", "parent", "right", "value")
    left: Any             # RBNode; the sentinel's links point to itself
    right: Any
    parent: Any

    def __init__(self, key: Any, value: Any, color: bool, nil: Any):
        self.key, self.value, self.color = key, value, color
        self.left = self.right = self.parent = nil


class RBTreeIndex:
    name = "rbtree"
    ordered = True

    def __init__(self) -> None:
        self.nil = RBNode(None, None, BLACK, None)
        self.nil.left = self.nil.right = self.nil.parent = self.nil
        self.root = self.nil
        self.size = 0

    def _find(self, key: Any) -> RBNode | None:
        x, nil = self.root, self.nil
        while x is not nil:
            k = x.key
            if key < k:
                x = x.left
            elif k < key:
                x = x.right
            else:
                return x
        return None

    def get(self, key: bytes, default: Any = None) -> Any:
        node = self._find(key)
        return default if node is None else node.value

    def __getitem__(self, key: bytes) -> Any:
        node = self._find(key)
        if node is None:
            raise KeyError(key)
        return node.value

    def __contains__(self, key: object) -> bool:
        return self._find(key) is not None

    def __len__(self) -> int:
        return self.size

    def clear(self) -> None:
        self.root = self.nil
        self.size = 0

    # -- rotations and insert ------------------------------------------------------
    def _rotate_left(self, x: RBNode) -> None:
        y = x.right
        x.right = y.left
        if y.left is not self.nil:
            y.left.parent = x
        y.parent = x.parent
        if x.parent is self.nil:
            self.root = y
        elif x is x.parent.left:
            x.parent.left = y
        else:
            x.parent.right = y
        y.left = x
        x.parent = y

    def _rotate_right(self, x: RBNode) -> None:
        y = x.left
        x.left = y.right
        if y.right is not self.nil:
            y.right.parent = x
        y.parent = x.parent
        if x.parent is self.nil:
            self.root = y
        elif x is x.parent.right:
            x.parent.right = y
        else:
            x.parent.left = y
        y.right = x
        x.parent = y

    def __setitem__(self, key: bytes, value: Any) -> None:
        nil = self.nil
        y, x = nil, self.root
        while x is not nil:
            y = x
            if key < x.key:
                x = x.left
            elif x.key < key:
                x = x.right
            else:
                x.value = value
                return
        z = RBNode(key, value, RED, nil)
        z.parent = y
        if y is nil:
            self.root = z
        elif key < y.key:
            y.left = z
        else:
            y.right = z
        self.size += 1
        self._insert_fixup(z)

    def _insert_fixup(self, z: RBNode) -> None:
        while z.parent.color is RED:
            gp = z.parent.parent
            if z.parent is gp.left:
                uncle = gp.right
                if uncle.color is RED:
                    z.parent.color = uncle.color = BLACK
                    gp.color = RED
                    z = gp
                else:
                    if z is z.parent.right:
                        z = z.parent
                        self._rotate_left(z)
                    z.parent.color = BLACK
                    z.parent.parent.color = RED
                    self._rotate_right(z.parent.parent)
            else:
                uncle = gp.left
                if uncle.color is RED:
                    z.parent.color = uncle.color = BLACK
                    gp.color = RED
                    z = gp
                else:
                    if z is z.parent.left:
                        z = z.parent
                        self._rotate_right(z)
                    z.parent.color = BLACK
                    z.parent.parent.color = RED
                    self._rotate_left(z.parent.parent)
        self.root.color = BLACK

    # -- delete --------------------------------------------------------------------
    def _transplant(self, u: RBNode, v: RBNode) -> None:
        if u.parent is self.nil:
            self.root = v
        elif u is u.parent.left:
            u.parent.left = v
        else:
            u.parent.right = v
        v.parent = u.parent

    def _minimum(self, x: RBNode) -> RBNode:
        while x.left is not self.nil:
            x = x.left
        return x

    def pop(self, key: bytes, *default: Any) -> Any:
        z = self._find(key)
        if z is None:
            if default:
                return default[0]
            raise KeyError(key)
        nil = self.nil
        y, y_color = z, z.color
        if z.left is nil:
            x = z.right
            self._transplant(z, z.right)
        elif z.right is nil:
            x = z.left
            self._transplant(z, z.left)
        else:
            y = self._minimum(z.right)
            y_color = y.color
            x = y.right
            if y.parent is z:
                x.parent = y
            else:
                self._transplant(y, y.right)
                y.right = z.right
                y.right.parent = y
            self._transplant(z, y)
            y.left = z.left
            y.left.parent = y
            y.color = z.color
        if y_color is BLACK:
            self._delete_fixup(x)
        self.size -= 1
        return z.value

    def __delitem__(self, key: bytes) -> None:
        self.pop(key)

    def _delete_fixup(self, x: RBNode) -> None:
        while x is not self.root and x.color is BLACK:
            if x is x.parent.left:
                w = x.parent.right
                if w.color is RED:
                    w.color = BLACK
                    x.parent.color = RED
                    self._rotate_left(x.parent)
                    w = x.parent.right
                if w.left.color is BLACK and w.right.color is BLACK:
                    w.color = RED
                    x = x.parent
                else:
                    if w.right.color is BLACK:
                        w.left.color = BLACK
                        w.color = RED
                        self._rotate_right(w)
                        w = x.parent.right
                    w.color = x.parent.color
                    x.parent.color = BLACK
                    w.right.color = BLACK
                    self._rotate_left(x.parent)
                    x = self.root
            else:
                w = x.parent.left
                if w.color is RED:
                    w.color = BLACK
                    x.parent.color = RED
                    self._rotate_right(x.parent)
                    w = x.parent.left
                if w.right.color is BLACK and w.left.color is BLACK:
                    w.color = RED
                    x = x.parent
                else:
                    if w.left.color is BLACK:
                        w.right.color = BLACK
                        w.color = RED
                        self._rotate_left(w)
                        w = x.parent.left
                    w.color = x.parent.color
                    x.parent.color = BLACK
                    w.left.color = BLACK
                    self._rotate_right(x.parent)
                    x = self.root
        x.color = BLACK

    # -- order ---------------------------------------------------------------------
    def items_from(self, start: bytes) -> Iterator[tuple[bytes, Any]]:
        """(key, value) in key order from the first key >= start (an explicit stack)."""
        nil, x = self.nil, self.root
        stack: list[RBNode] = []
        while x is not nil:
            if x.key < start:
                x = x.right
            else:
                stack.append(x)
                x = x.left
        while stack:
            x = stack.pop()
            yield x.key, x.value
            x = x.right
            while x is not nil:
                stack.append(x)
                x = x.left

    def __iter__(self) -> Iterator[bytes]:
        return iter([k for k, _ in self.items_from(b"")])

    def key_at(self, i: int) -> bytes:
        for j, (k, _) in enumerate(self.items_from(b"")):
            if j == i:
                return k
        raise IndexError(i)
