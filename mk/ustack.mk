# The user-space TCP/IP stack (course §2.4).
#   make lab-ustack        interop suite + measurements on labs/ustack/lab.yml (brought up if
#                          needed, and down again afterwards unless KEEP=1)
#   make lab-ustack USTACK_LAB=labs/ustack/dpdk.yml USTACK_ARGS="--bytes 8388608 --impaired-lab="
#                          the default VM lab's hosts with the stack over DPDK on h1 (the full run)
#   make lab-ustack USTACK_LAB=lab.yml   the same on the default lab (the stack on h1's data NIC)
#   make lab-ustack-down   take that lab down
# USTACK_ARGS="--bytes 8388608" for a shorter run.
USTACK_LAB ?= labs/ustack/lab.yml
USTACK_ARGS ?=
USTACK_HPNLAB := $(HPNLAB) --lab $(USTACK_LAB) $(if $(PROVIDER),--provider $(PROVIDER))
USTACK_SO_STAMP := build/.ustack-csum-built

.PHONY: lab-ustack lab-ustack-down ustack-build

# the stack's checksum helper (C, cffi); without it the stack sums in Python
setup: ustack-build

ustack-build: $(SETUP_STAMP) $(USTACK_SO_STAMP)

$(USTACK_SO_STAMP): src/hpnlab/ustack/_build.py
	@echo "==> the stack's checksum helper (cffi)"
	@$(VENV)/bin/python -m hpnlab.ustack._build && mkdir -p build && touch $@

lab-ustack: setup
	@if $(USTACK_HPNLAB) status >/dev/null 2>&1; then was=up; else was=down; fi; \
	$(USTACK_HPNLAB) ustack lab --up $(USTACK_ARGS); rc=$$?; \
	if [ $$was = down ] && [ "$(KEEP)" != 1 ]; then \
	  echo "==> lab-ustack: taking down the lab this target brought up (KEEP=1 keeps it)"; \
	  $(USTACK_HPNLAB) down || rc=1; \
	fi; exit $$rc

lab-ustack-down: setup
	$(USTACK_HPNLAB) down
