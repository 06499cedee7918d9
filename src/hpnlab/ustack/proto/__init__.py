"""One package per protocol layer: parse (integrity check, then sanity check) and build."""
