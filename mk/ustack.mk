# The user-space TCP/IP stack (issue 14, course §2.4).
#   make lab-ustack        interop suite + measurements on labs/ustack/lab.yml (brought up if needed)
#   make lab-ustack-down   take that lab down
# USTACK_ARGS="--bytes 8388608" for a shorter run.
USTACK_LAB ?= labs/ustack/lab.yml
USTACK_ARGS ?=
USTACK_HPNLAB := $(HPNLAB) --lab $(USTACK_LAB) $(if $(PROVIDER),--provider $(PROVIDER))

.PHONY: lab-ustack lab-ustack-down

lab-ustack: setup
	$(USTACK_HPNLAB) ustack lab --up $(USTACK_ARGS)

lab-ustack-down: setup
	$(USTACK_HPNLAB) down
