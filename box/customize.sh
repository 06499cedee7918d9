#!/bin/bash
# mmdebstrap --customize-hook: turn the chroot $1 into a Vagrant box's root.
# Env (from build.sh): HPNLAB_BOX_FILES, HPNLAB_BOX_UUID, HPNLAB_BOX_PUBKEY_FILE, HPNLAB_BOX_RECIPE.
set -euo pipefail
root=${1:?}
files=$HPNLAB_BOX_FILES
chr() { chroot "$root" "$@"; }

echo hpnlab > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\thpnlab\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
printf 'UUID=%s\t/\text4\tdefaults,noatime\t0\t0\n' "$HPNLAB_BOX_UUID" > "$root/etc/fstab"
: > "$root/etc/resolv.conf"
# An empty machine-id: every VM makes its own at first boot (and so its own DHCP client id).
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"

# Network: networkd does the management NIC only; net.ifnames=0 keeps eth0, eth1, ...
install -m 0644 "$files/10-hpnlab-mgmt.network" "$root/etc/systemd/network/"
chr systemctl enable systemd-networkd.service
chr systemctl mask systemd-networkd-wait-online.service
# Boot faster: nothing in a lab VM needs these timers.
# dpdk.service (dpdk-init) alone held the network back ~24 s under TCG; hpnlab binds
# NICs for DPDK itself. getty-static waits for a logind the box does not have.
# Under TCG every unit costs a guest ~0.3-1 s of emulated fork/exec, so a unit nothing
# in a lab uses goes: module preloads (fuse, loop, dm, efi_pstore; the kernel loads a
# module on first use anyway), binfmt_misc, the FUSE/configfs mounts, utmp records,
# the getty on a screen the VM does not have, and the journal's flush to disk (the
# journal is kept in memory: see 90-hpnlab.conf). redis-server is there for the KV lab,
# which starts its own on a port of its choosing; a daemon of the package's own would
# take CPU from every benchmark on the guest.
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
            dpkg-db-backup.timer dpdk.service getty-static.service \
            modprobe@configfs.service modprobe@dm_mod.service modprobe@efi_pstore.service \
            modprobe@fuse.service modprobe@loop.service modprobe@drm.service \
            sys-fs-fuse-connections.mount sys-kernel-config.mount \
            systemd-binfmt.service proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount \
            systemd-network-generator.service systemd-update-utmp.service \
            systemd-update-utmp-runlevel.service systemd-journal-flush.service getty@tty1.service \
            redis-server.service; do
  chr systemctl mask "$unit" >/dev/null 2>&1 || true
done
install -d "$root/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=32M\n' > "$root/etc/systemd/journald.conf.d/90-hpnlab.conf"

# SSH: fresh host keys per VM, key-only logins.
rm -f "$root"/etc/ssh/ssh_host_*
install -m 0644 "$files/hpnlab-hostkeys.service" "$root/etc/systemd/system/"
chr systemctl enable hpnlab-hostkeys.service
install -m 0644 "$files/sshd-hpnlab.conf" "$root/etc/ssh/sshd_config.d/hpnlab.conf"
# Every SSH session would run the motd scripts: slow under TCG, and nothing to read.
sed -i '/pam_motd\.so/d; /pam_mail\.so/d' "$root/etc/pam.d/sshd"
rm -f "$root/etc/update-motd.d/"* "$root/etc/motd"

# The vagrant user (password-less sudo), logging in first with Vagrant's well-known
# key; hpnlab's Vagrantfile replaces that key with the lab's own on first boot.
chr useradd --create-home --shell /bin/bash --user-group vagrant
echo 'vagrant ALL=(ALL) NOPASSWD:ALL' > "$root/etc/sudoers.d/vagrant"
chmod 0440 "$root/etc/sudoers.d/vagrant"
install -d -m 0700 "$root/home/vagrant/.ssh"
install -m 0600 "$HPNLAB_BOX_PUBKEY_FILE" "$root/home/vagrant/.ssh/authorized_keys"
chr chown -R vagrant:vagrant /home/vagrant/.ssh
install -d -m 0700 "$root/root/.ssh"

# Kernel modules a lab uses (DPDK's uio_pci_generic, netem for impairment) load on demand.
printf 'uio_pci_generic\n' > "$root/etc/modules-load.d/hpnlab.conf"

# GRUB reads this; build.sh puts GRUB itself in the MBR gap.
kernel=$(cd "$root/boot" && ls vmlinuz-* | sort -V | tail -1)
initrd=initrd.img-${kernel#vmlinuz-}
[ -e "$root/boot/$initrd" ] || { echo "customize.sh: no $initrd in the image" >&2; exit 1; }
install -d "$root/boot/grub"
cat > "$root/boot/grub/grub.cfg" <<CFG
# hpnlab-debian12 (recipe $HPNLAB_BOX_RECIPE): boot straight into the one kernel.
set timeout=0
linux /boot/$kernel root=UUID=$HPNLAB_BOX_UUID ro net.ifnames=0 biosdevname=0 console=tty0 console=ttyS0,115200n8 quiet loglevel=4 mitigations=off fsck.mode=skip intel_iommu=on iommu=pt
initrd /boot/$initrd
boot
CFG
echo "$HPNLAB_BOX_RECIPE" > "$root/etc/hpnlab-box-recipe"

# hpnlab's native parts (the bench's load generator, the liburing binding), compiled here
# with the box's own compiler and headers by the command the labcode role runs on a
# guest, into the role's prefix, with the stamps it checks: a guest whose hpnlab has the
# same sources finds them current and copies instead of compiling under TCG (45 s a guest
# on an idle machine, minutes on a busy one). Newer sources: the guest compiles them.
# HPNLAB_BOX_LABCODE: a zip of the package (`python -m hpnlab.labcode pack`, vm/box.py).
if [ -n "${HPNLAB_BOX_LABCODE:-}" ]; then
  printf '==> [box] hpnlab native parts (load generator, liburing binding) into /opt/hpnlab/build\n'
  prefix=$root/opt/hpnlab
  install -d "$prefix"
  python3 -m zipfile -e "$HPNLAB_BOX_LABCODE" "$prefix/lib"
  echo box-build > "$prefix/FINGERPRINT"       # labcode builds into <prefix>/build only under a prefix
  built=$(chr env PYTHONPATH=/opt/hpnlab/lib PYTHONDONTWRITEBYTECODE=1 python3 -m hpnlab.labcode build)
  rm -rf "$prefix/lib" "$prefix/FINGERPRINT"  # the role installs the lab's own copy
  echo "$built"
  case $built in
    *'"missing": {}'*) ;;
    *) echo "customize.sh: the box cannot build hpnlab's native parts: $built" >&2; exit 1 ;;
  esac
fi
chr apt-get clean
