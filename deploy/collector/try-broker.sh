#!/usr/bin/env bash
# Mosquitto as deploy/collector/mosquitto.conf sets it up (TLS; devices on one listener with
# certificates from the deployment CA, their CN as username and client id, edge.acl; collectors on
# another with certificates from the collectors' CA, collectors.acl), on this machine, for trying
# the collector side out:
#   deploy/collector/try-broker.sh CA_DIR SERVER_DIR PORT COLLECTOR_PORT
# CA_DIR is what `edge provision ca` made, SERVER_DIR holds server.crt and server.key (edge provision
# server). Devices connect to 127.0.0.1:PORT, collectors to 127.0.0.1:COLLECTOR_PORT. It keeps
# nothing on disk, and stops with Ctrl-C or kill.
set -euo pipefail
if [ $# -ne 4 ]; then
  echo "usage: $0 CA_DIR SERVER_DIR PORT COLLECTOR_PORT" >&2
  exit 2
fi
HERE=$(cd "$(dirname "$0")" && pwd)
CA=$(cd "$1" && pwd)
SRV=$(cd "$2" && pwd)
PORT=$3
CPORT=$4
for f in "$CA/ca.crt" "$CA/collectors-ca.crt" "$CA/devices.crl" "$SRV/server.crt" "$SRV/server.key"; do
  [ -f "$f" ] || { echo "try-broker: $f not found (make it with edge provision)" >&2; exit 2; }
done
MOSQ=$(command -v mosquitto || echo /usr/sbin/mosquitto)
[ -x "$MOSQ" ] || { echo "try-broker: mosquitto is not installed (apt-get install mosquitto)" >&2; exit 2; }
WORK=$(mktemp -d /tmp/edge-try-broker.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
{
  # as root, mosquitto would switch to its own user, who may not read the files named below
  [ "$(id -u)" -ne 0 ] || echo "user root"
  # the shipped settings, with this machine's ports and files and no persistence
  grep -v -E '^(persistence|persistence_location|autosave_interval)\b' "$HERE/mosquitto.conf" | grep -v '^#' |
    sed -e "s|^listener 8883\$|listener $PORT 127.0.0.1|" -e "s|^listener 8884\$|listener $CPORT 127.0.0.1|" \
        -e "s|/etc/mosquitto/edge/server\.|$SRV/server.|" -e "s|/etc/mosquitto/edge/edge\.acl|$HERE/edge.acl|" \
        -e "s|/etc/mosquitto/edge/collectors\.acl|$HERE/collectors.acl|" \
        -e "s|/etc/mosquitto/edge/|$CA/|"
  echo "persistence false"
} > "$WORK/mosquitto.conf"
echo "try-broker: mosquitto on 127.0.0.1:$PORT (devices) and 127.0.0.1:$CPORT (collectors)" >&2
"$MOSQ" -c "$WORK/mosquitto.conf" &
PID=$!
trap 'kill $PID 2>/dev/null; rm -rf "$WORK"' EXIT INT TERM
wait $PID
