# I/O-models lab: the C load generator, the liburing binding, `make lab-bench`.
#   make lab-bench                      full grid; lab mode if the lab is up, else pinned loopback
#   make lab-bench BENCH_ARGS=--quick   a fast smoke run
#   make lab-bench BENCH_ARGS="--engines coro,uring,uvloop --conns 100,10000"
BENCH_ARGS ?=
LOADGEN_BIN := build/hpnlab-loadgen
URING_SO_STAMP := build/.uring-binding-built

.PHONY: lab-bench bench-build

# perf counts the servers' syscalls per request (strace, in the main list, is the fallback).
APT_PACKAGES += linux-perf

# `setup` also builds what the bench needs (after the venv exists).
setup: bench-build

bench-build: $(SETUP_STAMP) $(LOADGEN_BIN) $(URING_SO_STAMP)

$(LOADGEN_BIN): src/hpnlab/bench/loadgen.c
	@echo "==> hpnlab-loadgen"
	@$(VENV)/bin/python -m hpnlab.bench.loadgen --build

$(URING_SO_STAMP): src/hpnlab/uring/_build.py
	@echo "==> liburing binding (cffi)"
	@$(VENV)/bin/python -m hpnlab.uring._build && mkdir -p build && touch $@

lab-bench: setup
	$(HPNLAB) $(HPNLAB_ARGS) bench $(BENCH_ARGS)
