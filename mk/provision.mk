# Provisioning (Ansible) and verification (testinfra) — issue 4.
#   make lab-provision [LAB=lab.yml] [PROVIDER=...]   write inventory/<lab>.yml, run ansible/site.yml
#   make lab-verify                                   testinfra on every host: table host × check
#   make lab-release                                  give back hugepages/hugetlbfs/machine sysctls (netns)
#   make lint-ansible                                 ansible-lint (also run by `make test` through a test)
.PHONY: lab-provision lab-verify lab-release lab-release-all lint-ansible

lab-provision: setup
	$(HPNLAB) $(HPNLAB_ARGS) provision

lab-verify: setup
	$(HPNLAB) $(HPNLAB_ARGS) verify

lab-release: setup
	$(HPNLAB) $(HPNLAB_ARGS) provision --release

# `make lab-down` first gives back what provisioning took from the machine
# (netns hosts share its hugepage pool and machine-wide sysctls).
lab-down: lab-release

# `make lab-cleanup` removes every hpnlab lab's leftovers: give back what they all hold first.
lab-cleanup: lab-release-all

lab-release-all: setup
	$(VENV)/bin/python -m hpnlab.machine release-all

lint-ansible: setup
	cd ansible && ../$(VENV)/bin/ansible-lint
