#!/bin/bash -e
# pi-gen stage for Raspberry Pi OS (bookworm, arm64), added after stage2:
#   STAGE_LIST="stage0 stage1 stage2 /path/to/deploy/pi-gen/stage-edge"
# Before running pi-gen, stage the wheels and models from the project checkout:
#   deploy/image/stage.sh deploy/pi-gen/stage-edge/00-install-edge/files/edge-install
if [ ! -d "${ROOTFS_DIR}" ]; then
  copy_previous
fi
