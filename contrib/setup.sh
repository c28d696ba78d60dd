#!/usr/bin/env bash
# Installs what building and testing d2dfs needs on a fresh Debian machine: system packages
# (only those missing; needs root or sudo) and the Synapse venv used by the tests and the demo.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(fuse3 attr pkg-config libsqlite3-dev curl coturn iproute2 nftables)

missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    echo "setup: installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

contrib/synapse.sh install

# aiortc: the independent MSC2354 peer the interoperability tests run (tests/peers/).
aiortc_venv=${D2DFS_AIORTC_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/d2dfs/aiortc-venv}
if ! "$aiortc_venv/bin/python" -c 'import aiortc' 2>/dev/null; then
    echo "setup: installing aiortc into $aiortc_venv" >&2
    python3 -m venv "$aiortc_venv"
    "$aiortc_venv/bin/pip" install --quiet --disable-pip-version-check aiortc >&2
fi
