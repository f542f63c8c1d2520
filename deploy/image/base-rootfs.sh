#!/usr/bin/env bash
# The image's base: an arm64 Debian bookworm root filesystem with every Debian package the device
# needs (and, unless LEAN=1, the kernel, its initramfs and the Raspberry Pi boot files), written as
# one tar file. Nothing of the project is in it: deploy/image/build adds that on top.
#
#   deploy/image/base-rootfs.sh OUT.tar      (called by deploy/image/build; root, qemu-user binfmt)
#
# This is the slow part of an image build (package scripts under emulation), so deploy/image/build
# caches its tar keyed by a digest of this file, LEAN and MIRROR.
#
# The initramfs is made once, at the end: the kernel's postinst (INITRD=No) and the initramfs-tools
# trigger (no initramfs to update yet) would otherwise each make one, and each run of mkinitramfs
# under qemu-user takes minutes.
set -euo pipefail
TAR=${1:?usage: base-rootfs.sh OUT.tar}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
LEAN=${LEAN:-0}

PKGS=systemd-sysv,udev,dbus,python3,python3-venv,ca-certificates,openssh-server,chrony,gpsd,iproute2,netbase,libgomp1
if [ "$LEAN" != 1 ]; then
  PKGS=$PKGS,linux-image-arm64,raspi-firmware,initramfs-tools,firmware-brcm80211,wireless-regdb,dosfstools
fi

# shellcheck disable=SC2016
INITRAMFS_ONCE='if [ -x "$1/usr/sbin/update-initramfs" ]; then
  for k in "$1"/usr/lib/modules/*; do chroot "$1" update-initramfs -c -k "$(basename "$k")"; done
fi'

INITRD=No mmdebstrap --format=tar --arch=arm64 --variant=minbase --components="main non-free-firmware" --include="$PKGS" \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --customize-hook="$INITRAMFS_ONCE" \
  bookworm "$TAR" "$MIRROR"
