# hpnlab — the README's two commands are `make lab-up` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
HPNLAB := $(VENV)/bin/hpnlab
LAB ?= lab.yml
PROVIDER ?=
H ?= h1
NET ?= data
HPNLAB_ARGS := --lab $(LAB) $(if $(PROVIDER),--provider $(PROVIDER))

# Debian packages the netns provider and the labs need on the machine.
# openssh-server and netcat-openbsd: the static provider's test runs sshd inside lab
# namespaces and reaches it with `nc` as the ProxyCommand (no sshd runs on the machine).
# python3-yaml: `make lab-up` reads the lab file with the system python3 (before the venv).
APT_PACKAGES := iproute2 iputils-ping nftables iptables ethtool tcpdump tshark iperf3 procps psmisc strace \
                gcc make libc6-dev liburing-dev python3-venv python3-dev python3-yaml openssh-server netcat-openbsd
SETUP_STAMP := $(VENV)/.setup-done

.PHONY: setup apt-packages lab-up lab-down lab-status lab-shell lab-capture lab-graph lab-cleanup \
        test test-unit test-integration test-vm lint bench-substrate clean

setup: $(SETUP_STAMP)

# A policy-rc.d (exit 101) while apt installs, unless one is there: openssh-server's
# postinst would otherwise start an sshd on the machine. apt prints a line per phase
# (hpnlab.vm apt; plain apt-get where there is no python3 yet), its full log goes to a file.
apt-packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "==> apt packages:" $$missing; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  policy=; if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    policy=/usr/sbin/policy-rc.d; printf '#!/bin/sh\nexit 101\n' > $$policy; chmod 0755 $$policy; \
	  fi; \
	  if command -v $(PYTHON) >/dev/null; then \
	    PYTHONPATH=src $(PYTHON) -m hpnlab.vm apt --log /var/log/hpnlab/apt-base.log $$missing; \
	  else apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; fi; rc=$$?; \
	  if [ -n "$$policy" ]; then rm -f $$policy; fi; \
	  [ $$rc -eq 0 ]; \
	fi

$(SETUP_STAMP): pyproject.toml Makefile | apt-packages
	@echo "==> python venv $(VENV)"
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@# --no-compile: Python compiles what it imports, on first import; compiling every
	@# module of every dependency here took a third of pip's time.
	@$(VENV)/bin/pip install -q --no-compile -e '.[dev]'
	@touch $@

# A VM lab's packages and box build (`hpnlab.vm prepare`, system python3) run while pip
# fills the venv: on a fresh machine the two overlap instead of adding up.
lab-up: apt-packages
	@PYTHONPATH=src $(PYTHON) -m hpnlab.vm prepare $(HPNLAB_ARGS) & prepare=$$!; \
	$(MAKE) --no-print-directory setup; rc=$$?; \
	wait $$prepare && [ $$rc -eq 0 ]
	$(HPNLAB) $(HPNLAB_ARGS) up && $(HPNLAB) $(HPNLAB_ARGS) provision

lab-down: setup
	$(HPNLAB) $(HPNLAB_ARGS) down

lab-status: setup
	$(HPNLAB) $(HPNLAB_ARGS) status

lab-shell: setup
	$(HPNLAB) $(HPNLAB_ARGS) shell $(H)

lab-capture: setup
	$(HPNLAB) $(HPNLAB_ARGS) capture $(NET) -w results/capture-$(NET).pcap

lab-graph: setup
	$(HPNLAB) $(HPNLAB_ARGS) graph -o results/topology.png

lab-cleanup: setup
	$(HPNLAB) cleanup

# Every test: the lint, unit, netns integration (root) and the VM tests. CI runs exactly this.
# Two pytest runs side by side: the VM tests mostly wait on their TCG guests and the others
# mostly on namespaces' timers and sockets, so together they take about half the time of one
# after the other. The VM run's output follows the other's; both must pass.
PYTEST := $(VENV)/bin/pytest -q -rs --timeout 1800
test: setup lint
	@mkdir -p .lab; echo "==> the VM tests (pytest -m vm) run beside the others; their log: .lab/test-vm.log"
	@$(PYTEST) --durations 10 -m vm > .lab/test-vm.log 2>&1 & vm=$$!; \
	$(PYTEST) --durations 25 -m 'not vm'; rest=$$?; \
	wait $$vm; vmrc=$$?; echo "==> the VM tests (pytest -m vm):"; cat .lab/test-vm.log; \
	[ $$rest -eq 0 ] && [ $$vmrc -eq 0 ]

# ruff and mypy as pyproject.toml configures them; mypy keeps its cache in .lab/ (a warm
# run re-checks only what changed: ~2 s; a cold one ~10-40 s on the 2-core machine).
lint: setup
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy

test-unit: setup
	$(VENV)/bin/pytest -q tests/unit tests/topology

test-integration: setup
	$(VENV)/bin/pytest -q -m integration

test-vm: setup
	$(PYTEST) -m vm

bench-substrate: setup
	$(VENV)/bin/python -m hpnlab.bench.substrate

# Each area (vm, provisioning, benchmarks, labs) keeps its targets in mk/<area>.mk.
-include mk/*.mk

clean:
	rm -rf $(VENV) build src/*.egg-info
