#!/bin/bash
# Build the hpnlab-debian12 libvirt box from Debian packages (no Vagrant Cloud):
#   mmdebstrap minbase  ->  ext4 filesystem (mke2fs -d, no loop device, no mount)
#   -> MBR disk with GRUB's boot.img + core.img (BIOS boot)  ->  qcow2  ->  box (tar)
#
# usage: box/build.sh OUTDIR RECIPE_HASH
# Writes OUTDIR/hpnlab-debian12.box and, for a direct kernel boot and the short KVM
# test boot, OUTDIR/vmlinuz, initrd.img and cmdline.
# Env: HPNLAB_DEBIAN_MIRROR (default deb.debian.org), HPNLAB_BOX_DISK_GB (virtual disk
# size, default 8), HPNLAB_BOX_PUBKEY (the public key Vagrant logs in with first;
# default: the key that ships with Vagrant).
# Called by `make box` / `python -m hpnlab.vm box`, which caches the result by recipe hash.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build.sh OUTDIR RECIPE_HASH}
recipe=${2:?usage: build.sh OUTDIR RECIPE_HASH}
mirror=${HPNLAB_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
size_gb=${HPNLAB_BOX_DISK_GB:-8}
pubkey=${HPNLAB_BOX_PUBKEY:-$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub 2>/dev/null | head -1)}
[ -r "$pubkey" ] || { echo "build.sh: no Vagrant public key found (install vagrant, or set HPNLAB_BOX_PUBKEY)" >&2; exit 2; }
for tool in mmdebstrap mkfs.ext4 sfdisk grub-mkimage qemu-img; do
  command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing: run 'make vm-setup'" >&2; exit 2; }
done
grubdir=/usr/lib/grub/i386-pc
[ -r "$grubdir/boot.img" ] || { echo "build.sh: $grubdir/boot.img missing: apt-get install grub-pc-bin" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/var/tmp}/hpnlab-box.XXXXXX")
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
step() { printf '==> [box] %s\n' "$*"; }
t0=$SECONDS

# Downloaded .debs are kept between builds (a rebuild after a recipe change downloads only what changed).
debs=${HPNLAB_DEB_CACHE:-/var/cache/hpnlab/debs}
mkdir -p "$debs"
pkgs=$(sed 's/#.*//' "$here/packages.txt" | tr -s ' \t\n' ',' | sed 's/^,//; s/,$//')
export HPNLAB_BOX_FILES="$here/files" HPNLAB_BOX_UUID=$(cat /proc/sys/kernel/random/uuid) \
       HPNLAB_BOX_PUBKEY_FILE="$pubkey" HPNLAB_BOX_RECIPE="$recipe"

step "mmdebstrap $suite minbase + $(tr ',' '\n' <<<"$pkgs" | wc -l) packages from $mirror"
mmdebstrap --variant=minbase --mode=root --include="$pkgs" \
  --aptopt='Acquire::Retries "2"' --aptopt='APT::Install-Recommends "false"' --dpkgopt=force-unsafe-io \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/dpdk/examples/*' \
  --skip=download/empty --skip=essential/unlink \
  --setup-hook='"'"$here"'/debcache.sh" in "$1" "'"$debs"'"' \
  --essential-hook='mkdir -p "$1/etc/initramfs-tools/conf.d"' \
  --essential-hook='printf "MODULES=list\n" > "$1/etc/initramfs-tools/conf.d/hpnlab.conf"' \
  --essential-hook='mkdir -p "$1/usr/share/initramfs-tools/modules.d"' \
  --essential-hook='printf "virtio_pci\nvirtio_blk\n" > "$1/usr/share/initramfs-tools/modules.d/hpnlab"' \
  --customize-hook='"'"$here"'/debcache.sh" out "$1" "'"$debs"'"' \
  --customize-hook='"'"$here"'/customize.sh" "$1"' \
  --skip=cleanup/apt/lists \
  "$suite" "$work/root" "$mirror"
rm -rf "$work/root/var/lib/apt/lists/"* "$work/root/var/cache/apt/"*.bin
# The kernel, initrd and command line also go beside the box: hpnlab boots the guests'
# kernel directly (QEMU -kernel), past SeaBIOS and GRUB, and tests KVM with it.
cp "$work/root/boot/"vmlinuz-* "$work/vmlinuz"
cp "$work/root/boot/"initrd.img-* "$work/initrd.img"
sed -n 's/^linux [^ ]* //p' "$work/root/boot/grub/grub.cfg" > "$work/cmdline"
grep -q "root=UUID=$HPNLAB_BOX_UUID" "$work/cmdline" || { echo "build.sh: no kernel command line in grub.cfg" >&2; exit 1; }

step "disk image: ${size_gb} GiB MBR disk, ext4 root (mke2fs -d), GRUB for BIOS boot"
disk=$work/disk.raw
truncate -s "${size_gb}G" "$disk"
printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q "$disk"
mkfs.ext4 -q -F -L hpnlab-root -U "$HPNLAB_BOX_UUID" -E offset=$((2048 * 512)) \
  -d "$work/root" "$disk" "$(( size_gb * 1024 - 1 ))M"
# GRUB without grub-install (which needs a block device): the core image with the
# modules grub.cfg uses goes in the gap after the MBR (sector 1, where boot.img's
# default points), boot.img's code in the MBR's first 440 bytes (the partition
# table stays).
grub-mkimage -O i386-pc -d "$grubdir" -o "$work/core.img" -p '(hd0,msdos1)/boot/grub' \
  biosdisk part_msdos ext2 normal linux echo test configfile
core_sectors=$(( ($(stat -c %s "$work/core.img") + 511) / 512 ))
[ "$core_sectors" -lt 2047 ] || { echo "build.sh: GRUB core image too big ($core_sectors sectors)" >&2; exit 1; }
dd if="$grubdir/boot.img" of="$disk" bs=440 count=1 conv=notrunc status=none
dd if="$work/core.img" of="$disk" bs=512 seek=1 conv=notrunc status=none

step "qcow2 + box"
qemu-img convert -O qcow2 "$disk" "$work/box.img"
rm -f "$disk"
cp "$here/files/Vagrantfile" "$work/Vagrantfile"
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %d, "hpnlab_recipe": "%s"}\n' \
  "$size_gb" "$recipe" > "$work/metadata.json"
mkdir -p "$out"
tar -C "$work" -cf "$out/hpnlab-debian12.box.part" metadata.json Vagrantfile box.img
mv "$out/hpnlab-debian12.box.part" "$out/hpnlab-debian12.box"
cp "$work/vmlinuz" "$work/initrd.img" "$work/cmdline" "$out/"
step "done in $((SECONDS - t0)) s: $out/hpnlab-debian12.box ($(du -h "$out/hpnlab-debian12.box" | cut -f1))"
