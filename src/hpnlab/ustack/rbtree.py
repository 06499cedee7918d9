"""A red-black tree map (the left-leaning variant, Sedgewick 2008): what Linux's epoll
keeps its interest set in. Ordered, O(log n) worst case, memory that grows one node per
key with no table to resize (the course's answer to "why not a hash?")."""
from __future__ import annotations

RED, BLACK = True, False


class _Node:
    __slots__ = ("color", "key", "left", "right", "value")

    def __init__(self, key, value):
        self.key, self.value, self.left, self.right, self.color = key, value, None, None, RED


def _red(n) -> bool:
    return n is not None and n.color


def _rotate_left(h):
    x = h.right
    h.right, x.left = x.left, h
    x.color, h.color = h.color, RED
    return x


def _rotate_right(h):
    x = h.left
    h.left, x.right = x.right, h
    x.color, h.color = h.color, RED
    return x


def _flip(h):
    h.color = not h.color
    h.left.color = not h.left.color
    h.right.color = not h.right.color


def _fix(h):
    if _red(h.right) and not _red(h.left):
        h = _rotate_left(h)
    if _red(h.left) and _red(h.left.left):
        h = _rotate_right(h)
    if _red(h.left) and _red(h.right):
        _flip(h)
    return h


def _move_red_left(h):
    _flip(h)
    if _red(h.right.left):
        h.right = _rotate_right(h.right)
        h = _rotate_left(h)
        _flip(h)
    return h


def _move_red_right(h):
    _flip(h)
    if _red(h.left.left):
        h = _rotate_right(h)
        _flip(h)
    return h


def _min(h):
    while h.left is not None:
        h = h.left
    return h


def _delete_min(h):
    if h.left is None:
        return None
    if not _red(h.left) and not _red(h.left.left):
        h = _move_red_left(h)
    h.left = _delete_min(h.left)
    return _fix(h)


class RBTree:
    def __init__(self):
        self.root = None
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def get(self, key, default=None):
        n = self.root
        while n is not None:
            if key < n.key:
                n = n.left
            elif key > n.key:
                n = n.right
            else:
                return n.value
        return default

    def __contains__(self, key) -> bool:
        sentinel = object()
        return self.get(key, sentinel) is not sentinel

    def __getitem__(self, key):
        sentinel = object()
        v = self.get(key, sentinel)
        if v is sentinel:
            raise KeyError(key)
        return v

    def __setitem__(self, key, value) -> None:
        self.root = self._insert(self.root, key, value)
        self.root.color = BLACK

    def _insert(self, h, key, value):
        if h is None:
            self.size += 1
            return _Node(key, value)
        if key < h.key:
            h.left = self._insert(h.left, key, value)
        elif key > h.key:
            h.right = self._insert(h.right, key, value)
        else:
            h.value = value
        return _fix(h)

    def __delitem__(self, key) -> None:
        if key not in self:
            raise KeyError(key)
        if not _red(self.root.left) and not _red(self.root.right):
            self.root.color = RED
        self.root = self._delete(self.root, key)
        self.size -= 1
        if self.root is not None:
            self.root.color = BLACK

    def _delete(self, h, key):
        if key < h.key:
            if not _red(h.left) and not _red(h.left.left):
                h = _move_red_left(h)
            h.left = self._delete(h.left, key)
        else:
            if _red(h.left):
                h = _rotate_right(h)
            if key == h.key and h.right is None:
                return None
            if not _red(h.right) and not _red(h.right.left):
                h = _move_red_right(h)
            if key == h.key:
                m = _min(h.right)
                h.key, h.value = m.key, m.value
                h.right = _delete_min(h.right)
            else:
                h.right = self._delete(h.right, key)
        return _fix(h)

    def pop(self, key, *default):
        sentinel = object()
        v = self.get(key, sentinel)
        if v is sentinel:
            if default:
                return default[0]
            raise KeyError(key)
        del self[key]
        return v

    def items(self):
        stack, n = [], self.root
        while stack or n is not None:
            while n is not None:
                stack.append(n)
                n = n.left
            n = stack.pop()
            yield n.key, n.value
            n = n.right

    def __iter__(self):
        return (k for k, _ in self.items())

    def black_height(self) -> int:
        """Checks the red-black invariants; returns the black height (for tests)."""
        def walk(n):
            if n is None:
                return 1
            if _red(n) and (_red(n.left) or _red(n.right)):
                raise AssertionError(f"red node {n.key} has a red child")
            if _red(n.right):
                raise AssertionError(f"right-leaning red link at {n.key}")
            lh, rh = walk(n.left), walk(n.right)
            if lh != rh:
                raise AssertionError(f"black heights differ under {n.key}")
            return lh + (0 if _red(n) else 1)
        if _red(self.root):
            raise AssertionError("red root")
        return walk(self.root)
