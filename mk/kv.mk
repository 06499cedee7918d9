# The KV store: Debian's redis-server is the peer of the side-by-side tests and of
# the lab (redis-check-aof/-rdb come with it); redis-tools brings redis-cli and redis-benchmark.
APT_PACKAGES += redis-server redis-tools
