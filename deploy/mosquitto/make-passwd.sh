#!/usr/bin/env bash
# Create or extend the broker's password file (hashed by mosquitto_passwd).
#
#   deploy/mosquitto/make-passwd.sh PASSWD_FILE USER [USER...]
#
# Reads each user's password from the environment variable
# PASSWORD_<USER> (non-alphanumerics as '_', e.g. PASSWORD_kiosk_01), or asks
# on the terminal. Kiosk usernames are the kiosk ids; the operator account is
# "operator". Then reload the broker: `systemctl reload mosquitto`.
set -euo pipefail
file=${1:?usage: make-passwd.sh PASSWD_FILE USER [USER...]}
shift
[ $# -ge 1 ] || { echo "make-passwd: name at least one user" >&2; exit 2; }
command -v mosquitto_passwd >/dev/null || { echo "make-passwd: mosquitto_passwd not found (package mosquitto)" >&2; exit 1; }
umask 077
touch "$file"
for user in "$@"; do
  var="PASSWORD_$(printf '%s' "$user" | tr -c 'A-Za-z0-9' '_')"
  pw=${!var:-}
  if [ -z "$pw" ]; then
    read -r -s -p "password for $user: " pw; echo
  fi
  [ -n "$pw" ] || { echo "make-passwd: empty password for $user" >&2; exit 2; }
  mosquitto_passwd -b "$file" "$user" "$pw"
done
echo "make-passwd: $file has $(wc -l < "$file") user(s)"
