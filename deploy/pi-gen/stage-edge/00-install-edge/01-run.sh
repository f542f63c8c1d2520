#!/bin/bash -e
# The same install step as the Debian image (deploy/image/install-edge.sh), with the venv able to
# see apt's python3-picamera2 (PI_OS=1). Runs on the pi-gen host; on_chroot runs inside the image.
SRC="$(dirname "$0")/files/edge-install"
if [ ! -d "$SRC/wheels" ]; then
  echo "stage-edge: run deploy/image/stage.sh $SRC first" >&2
  exit 1
fi
rm -rf "${ROOTFS_DIR}/tmp/edge-install"
cp -r "$SRC" "${ROOTFS_DIR}/tmp/edge-install"
on_chroot << CHROOT
PI_OS=1 sh /tmp/edge-install/install-edge.sh
CHROOT
