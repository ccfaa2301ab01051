#!/usr/bin/env bash
# The same as compose.yaml with plain `docker run` (on the Jetson, after
# `docker build -f deploy/jetson/Dockerfile -t kiosk-recognition:jetson .`).
# CAMERA=/dev/video1 bash deploy/jetson/run.sh    to use another camera.
set -euo pipefail
CAMERA="${CAMERA:-/dev/video0}"
exec docker run -d --name kiosk --restart on-failure \
  --runtime nvidia --network host \
  --device "$CAMERA:$CAMERA" --group-add video \
  -v /var/lib/kiosk:/var/lib/kiosk \
  -v /etc/kiosk:/etc/kiosk:ro \
  -v /tmp/argus_socket:/tmp/argus_socket \
  -e KIOSK_BUNDLE=/var/lib/kiosk/store -e KIOSK_SEED_BUNDLE=/etc/kiosk/bundle \
  --stop-timeout 20 \
  kiosk-recognition:jetson
