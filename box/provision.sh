#!/bin/bash
# First-boot provisioning of an hpnlab VM (run by the Vagrantfile, as root, once).
# Env: HPNLAB_PUBKEY (the lab's public key), HPNLAB_HOSTNAME,
#      HPNLAB_NICS ("ifname,mac,address/prefix,mtu" for each data NIC, space-separated).
set -euo pipefail

# The lab's own key replaces Vagrant's well-known one, for vagrant and root.
for home in /home/vagrant /root; do
  install -d -m 0700 "$home/.ssh"
  printf '%s\n' "$HPNLAB_PUBKEY" > "$home/.ssh/authorized_keys"
  chmod 0600 "$home/.ssh/authorized_keys"
done
chown -R vagrant: /home/vagrant/.ssh

hostname "$HPNLAB_HOSTNAME"
echo "$HPNLAB_HOSTNAME" > /etc/hostname
if grep -q '^127\.0\.1\.1' /etc/hosts; then
  sed -i "s/^127\.0\.1\.1.*/127.0.1.1\t$HPNLAB_HOSTNAME/" /etc/hosts
else
  printf '127.0.1.1\t%s\n' "$HPNLAB_HOSTNAME" >> /etc/hosts
fi

# Data NICs, matched by MAC: static address, MTU, no IPv6 autoconfiguration
# (so captures show only the lab's own traffic).
if systemctl -q is-active systemd-networkd.service; then
  for spec in ${HPNLAB_NICS:-}; do
    IFS=, read -r ifname mac address mtu <<<"$spec"
    cat > "/etc/systemd/network/20-hpnlab-$ifname.network" <<NET
# hpnlab: $ifname of $HPNLAB_HOSTNAME (from the lab's topology model)
[Match]
MACAddress=$mac

[Link]
MTUBytes=$mtu

[Network]
Address=$address
LinkLocalAddressing=no
IPv6AcceptRA=no
NET
  done
  # (networkctl needs D-Bus, which the box does not run; systemctl does not)
  systemctl restart systemd-networkd.service
else
  mkdir -p /etc/network/interfaces.d
  for spec in ${HPNLAB_NICS:-}; do
    IFS=, read -r ifname mac address mtu <<<"$spec"
    dev=$(ip -o link | awk -v m="$mac" 'tolower($0) ~ m {sub(":", "", $2); print $2; exit}')
    [ -n "$dev" ] || { echo "hpnlab: no NIC with MAC $mac" >&2; exit 1; }
    printf 'auto %s\niface %s inet static\n    address %s\n    mtu %s\n' "$dev" "$dev" "$address" "$mtu" \
      > "/etc/network/interfaces.d/hpnlab-$dev"
    sysctl -q -w "net.ipv6.conf.$dev.disable_ipv6=1" || true
    ifup "$dev" 2>/dev/null || { ip link set "$dev" mtu "$mtu" up; ip addr replace "$address" dev "$dev"; }
  done
fi
