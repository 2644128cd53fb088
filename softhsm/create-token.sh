#!/usr/bin/env bash
# Creates an initialized SoftHSM2 token in DIR for development or CI.
#   softhsm/create-token.sh DIR [LABEL] [SO_PIN] [USER_PIN]
# Writes DIR/softhsm2.conf and DIR/tokens/; prints `export SOFTHSM2_CONF=...`.
# PINs not given are generated randomly and printed: they are THROWAWAY test PINs for a software token.
set -euo pipefail
dir=${1:?usage: create-token.sh DIR [LABEL] [SO_PIN] [USER_PIN]}
label=${2:-appliance}
so_pin=${3:-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')}
user_pin=${4:-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')}
command -v softhsm2-util >/dev/null || { echo "softhsm2-util not found: apt-get install softhsm2" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dir/tokens"
dir=$(cd "$dir" && pwd)
sed "s#@TOKENDIR@#$dir/tokens#" "$here/softhsm2.conf.template" > "$dir/softhsm2.conf"
export SOFTHSM2_CONF="$dir/softhsm2.conf"
if softhsm2-util --show-slots 2>/dev/null | grep -qE "Label:[[:space:]]*${label}[[:space:]]*\$"; then
  echo "token '$label' already exists in $dir (its PINs are unchanged)" >&2
  echo "export SOFTHSM2_CONF=$dir/softhsm2.conf"
  exit 0
fi
softhsm2-util --init-token --free --label "$label" --so-pin "$so_pin" --pin "$user_pin" >/dev/null
echo "export SOFTHSM2_CONF=$dir/softhsm2.conf"
echo "# token label: $label; user PIN: $user_pin (throwaway test PIN)"
