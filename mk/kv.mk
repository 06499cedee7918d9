# The KV store: Debian's redis-server is the peer of the side-by-side tests and of
# the lab (redis-check-aof/-rdb come with it); redis-tools brings redis-cli and redis-benchmark.
APT_PACKAGES += redis-server redis-tools

# `make lab-kv`: the store on h1 vs redis-server on h1, redis-benchmark on h2 (hpnlab kv lab);
# brings the lab up if it is not, and down again afterwards unless KEEP=1.
#   make lab-kv KV_ARGS="--engines epoll-lt,uvloop --indexes hash,skiplist --requests 50000"
#   make lab-kv LAB=labs/ustack/lab.yml   the ustack engine on a NIC of its own (the `stack` LAN)
KV_ARGS ?=
.PHONY: lab-kv
lab-kv: setup
	@if $(HPNLAB) $(HPNLAB_ARGS) status >/dev/null 2>&1; then was=up; else was=down; fi; \
	$(HPNLAB) $(HPNLAB_ARGS) kv lab --up $(KV_ARGS); rc=$$?; \
	if [ $$was = down ] && [ "$(KEEP)" != 1 ]; then \
	  echo "==> lab-kv: taking down the lab this target brought up (KEEP=1 keeps it)"; \
	  $(HPNLAB) $(HPNLAB_ARGS) down || rc=1; \
	fi; exit $$rc
