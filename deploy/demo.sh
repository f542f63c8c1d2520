#!/usr/bin/env bash
# The main job, end to end on one machine: a real Mosquitto broker on a free loopback port, a
# subscriber printing reads as they arrive over MQTT, and `edge replay` playing a bundled fixture
# clip through the whole pipeline (detect, read, track, outbox, MQTT).
set -euo pipefail
cd "$(dirname "$0")/.."
CLIP=${1:-fixtures/videos/07_mixed_styles.mp4}
BIN=.venv/bin
MOSQ=$(command -v mosquitto || echo /usr/sbin/mosquitto)
WORK=$(mktemp -d /tmp/edge-demo.XXXXXX)
PORT=$($BIN/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() { kill ${SUB:-} ${BROKER:-} 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$PORT" > "$WORK/mosquitto.conf"
"$MOSQ" -c "$WORK/mosquitto.conf" > "$WORK/broker.log" 2>&1 & BROKER=$!
for _ in $(seq 50); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
EXPECT=$($BIN/python -c "import json,sys; print(len(json.load(open(sys.argv[1]))['expected_reads']))" "${CLIP%.mp4}.json" 2>/dev/null || echo 0)
# the device as a technician would set it up: whose camera, where, and a fixed GPS position (a gate)
CROPS=${CROPS:-out/demo/crops}
cat > "$WORK/device.toml" <<TOML
[device]
id = "demo-gate-1"
state_dir = "$WORK/state"
[camera]
id = "gate-1-cam"
owner = "Example Transport Authority"
operator = "Demo Operations"
site = "North gate, lane 1"
source = "$CLIP"
[gps]
mode = "fixed"
lat = 47.07071
lon = 15.43950
[mqtt]
host = "127.0.0.1"
port = $PORT
TOML
echo "== broker: mosquitto on 127.0.0.1:$PORT"
echo "== collector side: edge subscribe (prints each read that arrives over MQTT; plate crops saved in $CROPS/)"
$BIN/edge subscribe --mqtt "127.0.0.1:$PORT" --client-id demo-collector --count "$EXPECT" --timeout 120 --save-crops "$CROPS" & SUB=$!
sleep 1
echo "== device side: edge replay $CLIP (at its recorded frame rate; device demo-gate-1, camera of Example Transport Authority)"
$BIN/edge replay "$CLIP" --config "$WORK/device.toml" --outbox "$WORK/outbox.db" --restart
wait $SUB || true
echo "== done: $EXPECT plate(s) expected in this clip (see ${CLIP%.mp4}.json); plate crops in $CROPS/"
