#!/usr/bin/env bash
# Creates an initialized SoftHSM2 token in DIR for development or CI.
#   [SO_PIN=...] [USER_PIN=...] softhsm/create-token.sh DIR [LABEL]
# Writes DIR/softhsm2.conf and DIR/tokens/; prints `export SOFTHSM2_CONF=...`.
# The PINs come from the environment, never from a command line (which every user can read in /proc); PINs not
# given are generated randomly and the user PIN is printed: THROWAWAY test PINs for a software token.
set -euo pipefail
dir=${1:?usage: [SO_PIN=...] [USER_PIN=...] create-token.sh DIR [LABEL]}
label=${2:-appliance}
[ $# -le 2 ] || { echo "create-token.sh: PINs are read from SO_PIN and USER_PIN in the environment" >&2; exit 2; }
module=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
so_pin=${SO_PIN:-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')}
user_pin=${USER_PIN:-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')}
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
SO_PIN=$so_pin USER_PIN=$user_pin python3 "$here/init_token.py" "$module" "$label"
echo "export SOFTHSM2_CONF=$dir/softhsm2.conf"
echo "# token label: $label; user PIN: $user_pin (throwaway test PIN)"
