#!/bin/sh
# First boot of a flashed card: take the per-device bundle from the FAT boot partition, move its
# secrets into /etc/edge (0600, owned by the service user), delete them from the FAT partition,
# set the hostname, regenerate SSH host keys, and start the reader.
# ROOT (default /) lets tests run it against a folder; BOOT is the boot partition's mount point.
set -eu
ROOT=${ROOT:-}
BOOT=${BOOT:-$ROOT/boot/firmware}
ETC=$ROOT/etc/edge
SVC_USER=${SVC_USER:-edge}
BUNDLE=$BOOT/edge-bundle

log() { echo "edge-firstboot: $*"; }

if [ ! -d "$BUNDLE" ]; then
  log "no bundle at $BUNDLE; nothing to do"
  exit 0
fi
[ -f "$BUNDLE/device.toml" ] || { log "error: $BUNDLE/device.toml is missing"; exit 1; }

install -d -m 0750 -o root -g "$SVC_USER" "$ETC"
install -d -m 0750 -o root -g "$SVC_USER" "$ETC/credentials"
for f in device.toml ca.crt device.crt hotlist.pub; do
  [ -f "$BUNDLE/$f" ] && install -m 0640 -o root -g "$SVC_USER" "$BUNDLE/$f" "$ETC/$f"
done
# secrets: 0600, owned by the service user; the unit hands them over with LoadCredential=
# (both credential files must exist for the unit to start: the unused one stays empty)
for f in device.key mqtt-password; do
  if [ -f "$BUNDLE/$f" ]; then
    install -m 0600 -o "$SVC_USER" -g "$SVC_USER" "$BUNDLE/$f" "$ETC/credentials/$f"
    # FAT has no permissions: overwrite, then delete the copy on the boot partition
    dd if=/dev/zero of="$BUNDLE/$f" bs=1 count="$(wc -c < "$BUNDLE/$f")" conv=notrunc 2>/dev/null || true
    rm -f "$BUNDLE/$f"
  else
    install -m 0600 -o "$SVC_USER" -g "$SVC_USER" /dev/null "$ETC/credentials/$f"
  fi
done
# the key that seals the outbox's queued reads (AES-256-GCM): made here, kept with the credentials,
# never on the boot partition and never beside the outbox in /var/lib/edge
if [ ! -s "$ETC/credentials/outbox.key" ]; then
  ( umask 077; head -c 32 /dev/urandom > "$ETC/credentials/outbox.key" )
  chown "$SVC_USER:$SVC_USER" "$ETC/credentials/outbox.key"
fi
if [ -f "$BUNDLE/authorized_keys" ]; then
  install -d -m 0700 "$ROOT/root/.ssh"
  install -m 0600 "$BUNDLE/authorized_keys" "$ROOT/root/.ssh/authorized_keys"
fi
if [ -f "$BUNDLE/hostname" ]; then
  name=$(tr -cd 'A-Za-z0-9.-' < "$BUNDLE/hostname" | cut -c1-63)
  if [ -n "$name" ]; then
    echo "$name" > "$ROOT/etc/hostname"
    grep -q "127.0.1.1" "$ROOT/etc/hosts" 2>/dev/null && sed -i "s/^127.0.1.1.*/127.0.1.1\t$name/" "$ROOT/etc/hosts" \
      || printf '127.0.1.1\t%s\n' "$name" >> "$ROOT/etc/hosts"
    [ -z "$ROOT" ] && hostname "$name" 2>/dev/null || true
  fi
fi
rm -rf "$BUNDLE"
sync
if [ -z "$ROOT" ]; then
  ssh-keygen -A >/dev/null 2>&1 || true
  systemctl enable edge.service >/dev/null 2>&1 || true
  systemctl start --no-block edge.service || true
fi
log "provisioned $(cat "$ROOT/etc/hostname" 2>/dev/null || echo device)"
