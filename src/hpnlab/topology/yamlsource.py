"""YAML loading that remembers where every key and item came from.

Validation errors must name the field *and its line*, so the loader builds
dicts and lists that carry the line numbers of their keys and items. It also
refuses duplicate keys, which plain PyYAML silently collapses (two hosts
called `h1` would otherwise become one).
"""
from __future__ import annotations

from collections.abc import Hashable

import yaml


class LineDict(dict):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.line = 0
        self.key_lines: dict = {}

    def line_of(self, key) -> int:
        return self.key_lines.get(key, self.line)


class LineList(list):
    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.line = 0
        self.item_lines: list = []

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if index < len(self.item_lines) else self.line


class DuplicateKey(yaml.MarkedYAMLError):
    pass


_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)     # libyaml: ~8x faster


class _Loader(_Base):  # type: ignore[valid-type,misc]  # (a base chosen at import: mypy sees no class)
    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:    # e.g. a date like 2024-02-30, a 5000-digit int
            raise yaml.constructor.ConstructorError(None, None, str(exc), node.start_mark) from None

    def construct_mapping(self, node, deep=False):
        self.flatten_mapping(node)
        result = LineDict()
        result.line = node.start_mark.line + 1
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                kind = "list" if isinstance(key, list) else "mapping" if isinstance(key, dict) else type(key).__name__
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"a key must be a plain value (a name or a number), not a {kind}", key_node.start_mark)
            if key in result:
                raise DuplicateKey(
                    "while reading a mapping", node.start_mark,
                    f"duplicate key {key!r} (first on line {result.key_lines[key]})",
                    key_node.start_mark)
            result[key] = self.construct_object(value_node, deep=True)
            result.key_lines[key] = key_node.start_mark.line + 1
        return result

    def construct_sequence(self, node, deep=False):
        result = LineList(self.construct_object(child, deep=True) for child in node.value)
        result.line = node.start_mark.line + 1
        result.item_lines = [child.start_mark.line + 1 for child in node.value]
        return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _Loader.construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _Loader.construct_sequence)


def load(text: str):
    """Parse YAML text into LineDict/LineList trees (raises yaml.YAMLError)."""
    return yaml.load(text, Loader=_Loader)
