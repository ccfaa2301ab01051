#!/usr/bin/env bash
# Install a Mosquitto broker where it is missing (Debian/Ubuntu, as root or with sudo).
set -euo pipefail
if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "mosquitto is not installed and this is not root: install the 'mosquitto' package" >&2
    exit 1
  fi
fi
if command -v apt-get >/dev/null 2>&1; then
  echo "installing mosquitto (apt-get)" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
  # The tests and the demo start their own broker on a free port; the
  # package's system service is not needed.
else
  echo "mosquitto is missing and apt-get is not available: install Mosquitto 2.x by hand" >&2
  exit 1
fi
