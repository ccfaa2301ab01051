#!/usr/bin/env bash
# `make demo`: the whole loop on the shipped sample, camera clip to MQTT events.
#   1. a broker: $MQTT_URL if given, else a private Mosquitto on a free loopback port
#   2. examples/subscriber.py, printing match events as they arrive
#   3. edge-runtime run on sample/clip.mp4 with sample/bundle, as a new kiosk runs it: no
#      configuration file, no region of interest (ONNX Runtime on the CPU)
#      with its set-up page (live view, events with snapshots, status) on 127.0.0.1 at a
#      free port: the address is printed; open it while the clip plays
#   4. a summary: events received against the clip's ground truth (sample/clip.csv),
#      and demo-out/preview.mp4: the clip with the outline of what differs from the
#      empty counter, the crop the encoder sees, the presentation state and the events
# DEMO_TRAIN=1 first runs the workstation side on sample/catalogue (trainer fit,
# eval on sample/queries, export, index; a few more minutes) and uses that bundle instead.
# DEMO_REALTIME=0 plays the clip as fast as the CPU allows instead of at 30 fps;
# DEMO_MAX_FRAMES=N stops after N frames (the tests use both).
# Everything it writes goes to demo-out/ (DEMO_OUT); everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${DEMO_OUT:-demo-out}"
KIOSK_ID="${KIOSK_ID:-demo-kiosk}"
BUNDLE="sample/bundle"
CLIP="sample/clip.mp4"
TRUTH="sample/clip.csv"
PY="$(command -v python3 || command -v python)"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"

PIDS=()
cleanup() {
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill -TERM "${PIDS[i]}" 2>/dev/null || true
  done
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    wait "${PIDS[i]}" 2>/dev/null || true
  done
  PIDS=()
}
trap cleanup EXIT
trap 'echo "demo: interrupted" >&2; exit 130' INT TERM

say() { printf '\n== %s\n' "$*"; }

rm -rf "$OUT" && mkdir -p "$OUT"
for f in "$BUNDLE/manifest.json" "$CLIP" "$TRUTH"; do
  [ -e "$f" ] || { echo "demo: $f is missing (bash deploy/make-sample.sh rebuilds sample/)" >&2; exit 2; }
done

if [ "${DEMO_TRAIN:-0}" = 1 ]; then
  say "workstation: train, evaluate, export and index on sample/catalogue"
  trainer fit sample/catalogue --out "$OUT/run" --epochs "${DEMO_TRAIN_EPOCHS:-6}" --seed 0
  trainer eval "$OUT/run" --gallery sample/catalogue --queries sample/queries \
    --sheet "$OUT/eval-sheet.png"
  trainer export "$OUT/run" --out "$OUT/bundle"
  trainer index "$OUT/bundle" sample/catalogue --no-progress
  BUNDLE="$OUT/bundle"
fi

say "bundle $BUNDLE"
"$PY" - "$BUNDLE" <<'EOF'
import sys
from models.bundle import verify_bundle
m = verify_bundle(sys.argv[1])
print(f"verified: version {m.bundle_version}, {m.item_count} items, {m.index.n_vectors} vectors of {m.embedding_size} dims")
EOF

say "matching three held-out photos (sample/queries) against the bundle"
edge-runtime match "$BUNDLE" --top-k 3 sample/queries/Fruit/Kiwi/Kiwi_001.jpg \
  sample/queries/Vegetables/Carrots/Carrots_001.jpg \
  sample/queries/Packages/Oat-Milk/Oatly-Oat-Milk/Oatly-Oat-Milk_001.jpg

if [ -n "${MQTT_URL:-}" ]; then
  BROKER="$MQTT_URL"
  say "broker: $BROKER (from MQTT_URL)"
else
  bash deploy/ensure-mosquitto.sh
  MOSQUITTO="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
  PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$PORT" > "$OUT/mosquitto.conf"
  "$MOSQUITTO" -c "$OUT/mosquitto.conf" > "$OUT/mosquitto.log" 2>&1 &
  PIDS+=($!)
  BROKER="mqtt://127.0.0.1:$PORT"
  "$PY" - "$PORT" <<'EOF'
import socket, sys, time
deadline = time.monotonic() + 10
while True:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.2).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("demo: mosquitto did not start (see demo-out/mosquitto.log)")
        time.sleep(0.1)
EOF
  say "broker: private Mosquitto at $BROKER"
fi

say "subscriber: examples/subscriber.py on kiosk/$KIOSK_ID/match (events print as they arrive)"
"$PY" examples/subscriber.py --broker "$BROKER" --topic "kiosk/$KIOSK_ID/match" \
  --jsonl "$OUT/events.jsonl" 2> "$OUT/subscriber.log" &
PIDS+=($!)
for _ in $(seq 100); do
  grep -q "subscribed to" "$OUT/subscriber.log" 2>/dev/null && break
  sleep 0.1
done
grep -q "subscribed to" "$OUT/subscriber.log" || { cat "$OUT/subscriber.log" >&2; exit 1; }

WEB_PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
say "kiosk: edge-runtime run on $CLIP (log: $OUT/runtime.log)"
echo "the kiosk's page (live view, events, status): http://127.0.0.1:$WEB_PORT/"
EXTRA=()
[ "${DEMO_REALTIME:-1}" = 1 ] && EXTRA+=(--realtime)
[ -n "${DEMO_MAX_FRAMES:-}" ] && EXTRA+=(--max-frames "$DEMO_MAX_FRAMES")
START=$(date +%s)
set +e
edge-runtime run --source "$CLIP" --bundle "$BUNDLE" --broker "$BROKER" --kiosk-id "$KIOSK_ID" \
  --preview "$OUT/preview.mp4" --outbox "$OUT/outbox.sqlite" --web "127.0.0.1:$WEB_PORT" "${EXTRA[@]}" > "$OUT/runtime.log" 2>&1 &
RUNTIME=$!
PIDS+=("$RUNTIME")
wait "$RUNTIME"
RC=$?
set -e
echo "edge-runtime exited with code $RC after $(( $(date +%s) - START )) s"
if [ "$RC" != 0 ]; then
  tail -n 30 "$OUT/runtime.log" >&2
  exit "$RC"
fi
sleep 1  # let the last QoS 1 events reach the subscriber
cleanup

say "summary"
SUMMARY=()
[ -n "${DEMO_MAX_FRAMES:-}" ] && SUMMARY+=(--frames "$DEMO_MAX_FRAMES")
"$PY" -m deploy.demo_summary "$OUT/events.jsonl" "$TRUTH" "${SUMMARY[@]}"
echo "what the kiosk saw (foreground outline, the crop it encoded, presentation state, events): $OUT/preview.mp4"
