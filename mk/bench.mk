# I/O-models lab: the C load generator, the liburing binding, `make lab-bench`.
#   make lab-bench                      full grid; lab mode if the lab is up, else pinned loopback
#   make lab-bench BENCH_ARGS=--quick   a fast smoke run
#   make lab-bench BENCH_ARGS="--engines coro,uring,uvloop --conns 100,10000"
#   make lab-bench-scaling              the parallel engines over --workers 1,2,4 on a 4-vCPU server host
BENCH_ARGS ?=
# The scaling curve's lab (h1 with 4 vCPUs) and run: brought up if it is not, down again
# afterwards unless it was up already or KEEP=1; BENCH_ARGS adds to (or overrides) the run's options.
SCALING_LAB ?= labs/bench/lab-4cpu.yml
SCALING_HPNLAB_ARGS := --lab $(SCALING_LAB) $(if $(PROVIDER),--provider $(PROVIDER))
SCALING_RUN := --mode lab --engines epoll-lt,threads,epoll-threads,epoll-acceptor,epoll-procs --workers 1,2,4 \
	--conns 100 --sizes 64 --duration 4 --repeats 1 --no-syscalls --quiet-wait 0
LOADGEN_BIN := build/hpnlab-loadgen
URING_SO_STAMP := build/.uring-binding-built

.PHONY: lab-bench lab-bench-scaling bench-build

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

lab-bench-scaling: setup
	@if $(HPNLAB) $(SCALING_HPNLAB_ARGS) status >/dev/null 2>&1; then was=up; else was=down; fi; rc=0; \
	if [ $$was = down ]; then $(HPNLAB) $(SCALING_HPNLAB_ARGS) up && $(HPNLAB) $(SCALING_HPNLAB_ARGS) provision; \
	  rc=$$?; fi; \
	if [ $$rc = 0 ]; then $(HPNLAB) $(SCALING_HPNLAB_ARGS) bench $(SCALING_RUN) $(BENCH_ARGS); rc=$$?; fi; \
	if [ $$was = down ] && [ "$(KEEP)" != 1 ]; then \
	  echo "==> lab-bench-scaling: taking down the lab this target brought up (KEEP=1 keeps it)"; \
	  $(HPNLAB) $(SCALING_HPNLAB_ARGS) down || rc=1; \
	fi; exit $$rc
