# Kernel labs. Each target brings its lab up if it is not (up is
# idempotent), runs the lab on the running lab's hosts, and writes
# results/<lab>/<stamp>/report.md with its plots, pcaps and data.json. A lab the
# target brought up for itself goes down again afterwards, unless KEEP=1.
#   make lab-p2p            TCP simultaneous open on $(LAB), then NAT traversal on $(NAT_LAB)
#   make lab-backlog        SYN queue / accept queue
#   make lab-epoll          LT vs ET
#   make lab-close          four-way close, simultaneous close, TIME_WAIT
# Extra options go in LAB_ARGS, e.g. `make lab-p2p-lan LAB_ARGS="--tries 50"`.
NAT_LAB ?= labs/p2p/nat.yml
LAB_ARGS ?=
NAT_ARGS := --lab $(NAT_LAB) $(if $(PROVIDER),--provider $(PROVIDER))
KEEP ?=

# $(call run-lab,HPNLAB ARGS,LAB[,provision]): run LAB on that lab, bringing it up if it is
# not up (and provisioning it, with `provision`: VMs get the lab code from there); down
# again afterwards if this target brought it up (the lab's exit status stays).
define run-lab
	@if $(HPNLAB) $(1) status >/dev/null 2>&1; then was=up; else was=down; fi; rc=0; \
	if [ $$was = down ] && [ -n "$(3)" ]; then $(HPNLAB) $(1) up && $(HPNLAB) $(1) provision; rc=$$?; fi; \
	if [ $$rc = 0 ]; then $(HPNLAB) $(1) lab --up $(2) $(LAB_ARGS); rc=$$?; fi; \
	if [ $$was = down ] && [ "$(KEEP)" != 1 ]; then \
	  echo "==> $(2): taking down the lab this target brought up (KEEP=1 keeps it)"; \
	  $(HPNLAB) $(1) down || rc=1; \
	fi; exit $$rc
endef

.PHONY: lab-p2p lab-p2p-lan lab-p2p-nat lab-p2p-nat-down lab-backlog lab-epoll lab-close

# one lab after the other (never two VM labs at once, even under make -j), the NAT part
# even when the LAN part failed; the exit status says if either did
lab-p2p: setup
	@rc=0; $(MAKE) --no-print-directory lab-p2p-lan || rc=1; \
	$(MAKE) --no-print-directory lab-p2p-nat || rc=1; exit $$rc

lab-p2p-lan: setup
	$(call run-lab,$(HPNLAB_ARGS),p2p,provision)

lab-p2p-nat: setup
	$(call run-lab,$(NAT_ARGS),nat)

lab-p2p-nat-down: setup
	$(HPNLAB) $(NAT_ARGS) down

lab-backlog: setup
	$(call run-lab,$(HPNLAB_ARGS),backlog,provision)

lab-epoll: setup
	$(call run-lab,$(HPNLAB_ARGS),epoll,provision)

lab-close: setup
	$(call run-lab,$(HPNLAB_ARGS),close,provision)
