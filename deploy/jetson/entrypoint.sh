#!/bin/sh
# Container entry point on a Jetson.
#  1. First start with an empty bundle store: seed it from $KIOSK_SEED_BUNDLE (a
#     bundle folder mounted read-only, default /etc/kiosk/bundle).
#  2. One-time engine build: compile the active bundle's ONNX encoder to a
#     TensorRT engine for this GPU (minutes, once; later starts find it in the
#     bundle's engines/ cache and skip; remote updates build their own).
#  3. exec the command (edge-runtime run ...), so it gets SIGTERM directly.
set -eu
STORE="${KIOSK_BUNDLE:-/var/lib/kiosk/store}"
SEED="${KIOSK_SEED_BUNDLE:-/etc/kiosk/bundle}"
PRECISION="${KIOSK_PRECISION:-fp16}"

if [ ! -e "$STORE/current" ] && [ ! -f "$STORE/manifest.json" ] && [ -f "$SEED/manifest.json" ]; then
  echo "kiosk: seeding bundle store $STORE from $SEED" >&2
  python3 -m edge_runtime.update.store init "$STORE" "$SEED"
fi

ACTIVE=""
if [ -e "$STORE/current" ]; then ACTIVE="$STORE/current"      # a bundle store (updates on)
elif [ -f "$STORE/manifest.json" ]; then ACTIVE="$STORE"        # a plain bundle folder
fi
if [ "${KIOSK_SKIP_ENGINE_BUILD:-0}" != 1 ] && [ -n "$ACTIVE" ]; then
  echo "kiosk: checking the TensorRT engine for $ACTIVE ($PRECISION); a first build takes minutes" >&2
  # A failed build is not fatal: `edge-runtime run` with backend "auto" falls
  # back to ONNX Runtime and says so in its log and status.
  edge-runtime build-engine "$ACTIVE" --precision "$PRECISION" \
    || echo "kiosk: engine build failed; the runtime will fall back to ONNX Runtime" >&2
fi

exec "$@"
