# Provisioning (Ansible) and verification (testinfra).
#   make lab-provision [LAB=lab.yml] [PROVIDER=...]   write inventory/<lab>.yml, run ansible/site.yml
#   make lab-verify                                   testinfra on every host: table host × check
#   make lab-release                                  give back hugepages/hugetlbfs/machine sysctls (netns), lab stays up
#   make lint-ansible                                 ansible-lint (also run by `make test` through a test)
.PHONY: lab-provision lab-verify lab-release lint-ansible

lab-provision: setup
	$(HPNLAB) $(HPNLAB_ARGS) provision

lab-verify: setup
	$(HPNLAB) $(HPNLAB_ARGS) verify

# `hpnlab down` and `hpnlab cleanup` give back what provisioning took from the
# machine themselves; this target does it alone, with the lab left up.
lab-release: setup
	$(HPNLAB) $(HPNLAB_ARGS) provision --release

lint-ansible: setup
	cd ansible && ../$(VENV)/bin/ansible-lint
