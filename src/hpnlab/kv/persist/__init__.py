"""Persistence in Redis's own formats: the append-only file (aof.py) and RDB snapshots (rdb.py)."""
