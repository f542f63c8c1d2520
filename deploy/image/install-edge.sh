#!/bin/sh
# Install the edge reader into a root filesystem. Runs inside the target (chroot, qemu-user for
# arm64) and is shared by the Debian image build (deploy/image/build) and the Raspberry Pi OS
# pi-gen stage (deploy/pi-gen/). Expects in /tmp/edge-install: wheels/ (the project's wheel and its
# aarch64 dependency wheels), models/ (*.onnx), units/ (systemd units), edge-firstboot.sh.
# PI_OS=1: make the venv with --system-site-packages so python3-picamera2 from apt is visible.
set -eu
SRC=${SRC:-/tmp/edge-install}
PREFIX=/opt/edge

# a dedicated service user, no login, no password
if ! id edge >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/edge --no-create-home --shell /usr/sbin/nologin edge
fi
for g in video dialout gpio; do
  getent group "$g" >/dev/null 2>&1 && usermod -aG "$g" edge
done

# the application: a venv from wheels only (no network needed inside the image)
if [ "${PI_OS:-0}" = 1 ]; then
  python3 -m venv --system-site-packages "$PREFIX/venv"
else
  python3 -m venv "$PREFIX/venv"
fi
"$PREFIX/venv/bin/pip" install --no-index --find-links "$SRC/wheels" --no-cache-dir -q edge-lpr
install -d -m 0755 "$PREFIX/models"
install -m 0644 "$SRC"/models/*.onnx "$PREFIX/models/"

# units and first boot
install -m 0644 "$SRC/units/edge.service" /etc/systemd/system/edge.service
install -m 0644 "$SRC/units/edge-firstboot.service" /etc/systemd/system/edge-firstboot.service
install -m 0644 "$SRC/units/edge-sshkeys.service" /etc/systemd/system/edge-sshkeys.service
install -m 0755 "$SRC/edge-firstboot.sh" /usr/local/sbin/edge-firstboot
install -d -m 0750 -o root -g edge /etc/edge
systemctl enable edge-firstboot.service edge.service edge-sshkeys.service >/dev/null 2>&1 || true
for s in chrony gpsd ssh systemd-networkd systemd-timesyncd; do
  systemctl enable "$s" >/dev/null 2>&1 || true
done

# wired network by DHCP
install -d /etc/systemd/network
printf '[Match]\nName=e*\n\n[Network]\nDHCP=yes\n' > /etc/systemd/network/20-wired.network

# SSH with keys only, no default password anywhere
if [ -d /etc/ssh ]; then
  install -d /etc/ssh/sshd_config.d
  printf 'PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n' \
    > /etc/ssh/sshd_config.d/10-edge.conf
  rm -f /etc/ssh/ssh_host_*  # made on first boot, never baked in
fi
passwd -l root >/dev/null 2>&1 || true

# nothing machine-specific baked in: not the build host's name either (first boot sets the device's)
echo edge-lpr > /etc/hostname
printf '127.0.0.1\tlocalhost\n127.0.1.1\tedge-lpr\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > /etc/hosts
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
rm -rf /var/cache/apt/archives/*.deb /var/lib/apt/lists/* "$SRC"
