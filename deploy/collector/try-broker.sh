#!/usr/bin/env bash
# Mosquitto as deploy/collector/mosquitto.conf sets it up (TLS, client certificates required, the
# certificate's CN as username, edge.acl), on this machine, for trying the collector side out:
#   deploy/collector/try-broker.sh CA_DIR SERVER_DIR PORT
# CA_DIR holds ca.crt (edge provision ca), SERVER_DIR server.crt and server.key (edge provision
# server). It listens on 127.0.0.1:PORT, keeps nothing on disk, and stops with Ctrl-C or kill.
set -euo pipefail
if [ $# -ne 3 ]; then
  echo "usage: $0 CA_DIR SERVER_DIR PORT" >&2
  exit 2
fi
HERE=$(cd "$(dirname "$0")" && pwd)
CA=$(cd "$1" && pwd)/ca.crt
SRV=$(cd "$2" && pwd)
PORT=$3
for f in "$CA" "$SRV/server.crt" "$SRV/server.key"; do
  [ -f "$f" ] || { echo "try-broker: $f not found (make it with edge provision)" >&2; exit 2; }
done
MOSQ=$(command -v mosquitto || echo /usr/sbin/mosquitto)
[ -x "$MOSQ" ] || { echo "try-broker: mosquitto is not installed (apt-get install mosquitto)" >&2; exit 2; }
WORK=$(mktemp -d /tmp/edge-try-broker.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
{
  # the shipped settings, with this machine's port and files and no persistence (the listener first:
  # settings before it would open a default listener on 1883)
  echo "listener $PORT 127.0.0.1"
  grep -v -E '^(listener|cafile|certfile|keyfile|acl_file|persistence|persistence_location|autosave_interval)\b' \
    "$HERE/mosquitto.conf" | grep -v '^#'
  echo "persistence false"
  echo "cafile $CA"
  echo "certfile $SRV/server.crt"
  echo "keyfile $SRV/server.key"
  echo "acl_file $HERE/edge.acl"
  # as root, mosquitto would switch to its own user, who may not read the files named above
  [ "$(id -u)" -ne 0 ] || echo "user root"
} > "$WORK/mosquitto.conf"
echo "try-broker: mosquitto on 127.0.0.1:$PORT (TLS, client certificates, deploy/collector/edge.acl)" >&2
"$MOSQ" -c "$WORK/mosquitto.conf" &
PID=$!
trap 'kill $PID 2>/dev/null; rm -rf "$WORK"' EXIT INT TERM
wait $PID
