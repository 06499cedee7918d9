# Kernel labs (issue 6). Each target brings its lab up if it is not (up is
# idempotent), runs the lab on the running lab's hosts, and writes
# results/<lab>/<stamp>/report.md with its plots, pcaps and data.json.
#   make lab-p2p            TCP simultaneous open on $(LAB), then NAT traversal on $(NAT_LAB)
#   make lab-backlog        SYN queue / accept queue
#   make lab-epoll          LT vs ET
#   make lab-close          four-way close, simultaneous close, TIME_WAIT
# Extra options go in LAB_ARGS, e.g. `make lab-p2p-lan LAB_ARGS="--tries 50"`.
NAT_LAB ?= labs/p2p/nat.yml
LAB_ARGS ?=
NAT_ARGS := --lab $(NAT_LAB) $(if $(PROVIDER),--provider $(PROVIDER))

.PHONY: lab-p2p lab-p2p-lan lab-p2p-nat lab-p2p-nat-down lab-backlog lab-epoll lab-close

lab-p2p: lab-p2p-lan lab-p2p-nat

lab-p2p-lan: setup
	$(HPNLAB) $(HPNLAB_ARGS) lab --up p2p $(LAB_ARGS)

lab-p2p-nat: setup
	$(HPNLAB) $(NAT_ARGS) lab --up nat $(LAB_ARGS)

lab-p2p-nat-down: setup
	$(HPNLAB) $(NAT_ARGS) down

lab-backlog: setup
	$(HPNLAB) $(HPNLAB_ARGS) lab --up backlog $(LAB_ARGS)

lab-epoll: setup
	$(HPNLAB) $(HPNLAB_ARGS) lab --up epoll $(LAB_ARGS)

lab-close: setup
	$(HPNLAB) $(HPNLAB_ARGS) lab --up close $(LAB_ARGS)
