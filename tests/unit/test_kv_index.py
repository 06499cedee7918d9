"""Every keyspace index against a plain dict + sorted list oracle (hypothesis), and the
skip list's ranks against a sorted list."""
from __future__ import annotations

from bisect import bisect_left

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpnlab.kv.index import INDEXES, new_index
from hpnlab.kv.index.skiplist import SkipList

keys = st.binary(min_size=0, max_size=4)
ops = st.lists(st.tuples(st.sampled_from(["set", "del", "get", "range"]), keys, st.integers(0, 99)),
               max_size=120)


@pytest.mark.parametrize("name", list(INDEXES))
@settings(max_examples=120, deadline=None)
@given(ops=ops)
def test_index_matches_oracle(name, ops):
    idx, oracle = new_index(name), {}
    for op, key, n in ops:
        if op == "set":
            idx[key] = n
            oracle[key] = n
        elif op == "del":
            assert idx.pop(key, None) == oracle.pop(key, None)
        elif op == "get":
            assert idx.get(key) == oracle.get(key)
            assert (key in idx) == (key in oracle)
        elif idx.ordered:
            ordered = sorted(oracle)
            want = ordered[bisect_left(ordered, key):]
            assert [k for k, _ in idx.items_from(key)] == want
        assert len(idx) == len(oracle)
    assert sorted(idx) == sorted(oracle)
    if idx.ordered:
        assert list(idx) == sorted(oracle)
        assert [idx.key_at(i) for i in range(len(oracle))] == sorted(oracle)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 50)), max_size=150))
def test_skiplist_ranks(ops):
    sl, oracle = SkipList(), []
    for add, k in ops:
        if add and k not in oracle:
            sl.insert(k, None)
            oracle.append(k)
        elif not add:
            assert sl.delete(k) == (k in oracle)
            if k in oracle:
                oracle.remove(k)
    oracle.sort()
    assert list(sl) == oracle
    for i, k in enumerate(oracle):
        assert sl.rank(k) == i
        assert sl.at(i).key == k
    assert sl.rank(1000) is None
