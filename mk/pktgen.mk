# DPDK binding and the packet generator (the course homework: 基于 dpdk 的发包工具).
#   make lab-pktgen                       generator vs dpdk-testpmd txonly, receiver accounting;
#                                         on $(LAB) (brought up if needed), report in results/pktgen/
#   make lab-pktgen PKTGEN_ARGS="--size 64,512,imix --seconds 3"
PKTGEN_ARGS ?=
DPDK_SO_STAMP := build/.dpdk-binding-built

# Debian's DPDK 22.11: runtime and PMDs, testpmd (dpdk), headers (libdpdk-dev), pkg-config for the build.
APT_PACKAGES += dpdk libdpdk-dev pkg-config

.PHONY: lab-pktgen dpdk-build

setup: dpdk-build

dpdk-build: $(SETUP_STAMP) $(DPDK_SO_STAMP)

$(DPDK_SO_STAMP): src/hpnlab/dpdk/_build.py
	@echo "==> DPDK binding (cffi)"
	@$(VENV)/bin/python -m hpnlab.dpdk._build && mkdir -p build && touch $@

# a lab this target brings up is provisioned first (on VMs that binds eth2 to DPDK)
lab-pktgen: setup
	$(call run-lab,$(HPNLAB_ARGS),pktgen $(PKTGEN_ARGS),provision)
