# VMs: the vagrant provider's machine setup and its locally built box.
#   make vm-setup   apt packages (--no-install-recommends), libvirtd + virtlogd, storage pool
#   make box        build the hpnlab-debian12 box if its recipe (box/) changed, add it to Vagrant
#   make vm-test    the VM end-to-end tests (pytest -m vm)
#   make vm-stop    stop the libvirt daemons hpnlab started (once no domain is left)
# `make lab-up` with `provider: vagrant` does vm-setup and box itself when needed.
.PHONY: vm-setup box box-rebuild vm-test vm-stop

vm-setup: setup
	$(VENV)/bin/python -m hpnlab.vm setup

box: setup
	$(VENV)/bin/python -m hpnlab.vm box

box-rebuild: setup
	$(VENV)/bin/python -m hpnlab.vm box --force

vm-test: setup
	$(VENV)/bin/pytest -q -m vm tests/e2e

vm-stop: setup
	$(VENV)/bin/python -m hpnlab.vm stop-daemons
