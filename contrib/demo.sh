#!/usr/bin/env bash
# The d2dfs demo, end to end on a local default: starts a throwaway Synapse on 127.0.0.1,
# registers two accounts (alice, bob), logs both in (one profile each), creates a private
# encrypted room they share, mounts both accounts' filesystems, copies a file into alice's
# room directory, copies it out of bob's, checks the sha256 and prints the throughput.
# Everything lives in a temporary directory removed at the end (D2DFS_DEMO_KEEP=1 keeps it).
#
#   contrib/demo.sh [SIZE]     SIZE of the demo file, default 256M (anything `head -c` takes)
#
# D2DFS_BIN=path/to/d2dfs skips the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-256M}

contrib/setup.sh
if [ -z "${D2DFS_BIN:-}" ]; then
    echo "demo: building d2dfs (release)" >&2
    cargo build --release --locked --quiet
    D2DFS_BIN=$PWD/target/release/d2dfs
fi
d2dfs=$D2DFS_BIN

work=$(mktemp -d "${TMPDIR:-/tmp}/d2dfs-demo.XXXXXX")
# shellcheck source=contrib/two-mounts.sh
. contrib/two-mounts.sh
cleanup() {
    two_mounts_cleanup
    if [ "${D2DFS_DEMO_KEEP:-}" = 1 ]; then echo "demo: kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

two_mounts_up encrypted
echo "demo: homeserver at $url; alice and bob share the encrypted room $room; both mounted"
echo "demo: bob's mount:"
ls -la "$bob_mnt"

echo "demo: making a $size file"
head -c "$size" /dev/urandom >"$work/demo.bin"
bytes=$(stat -c %s "$work/demo.bin")

echo "demo: cp demo.bin into alice's room directory (offers it)"
cp "$work/demo.bin" "$alice_mnt/$room/"
wait_for "$bob_mnt/$room/demo.bin"
echo "demo: bob's mount shows the offer:"
ls -l "$bob_mnt/$room/"

echo "demo: cp demo.bin out of bob's mount (accepts it and pulls the bytes device to device)"
start=$(date +%s.%N)
cp "$bob_mnt/$room/demo.bin" "$work/received.bin"
end=$(date +%s.%N)

sent=$(sha256sum <"$work/demo.bin" | cut -d' ' -f1)
received=$(sha256sum <"$work/received.bin" | cut -d' ' -f1)
echo "demo: sha256 sent     $sent"
echo "demo: sha256 received $received"
if [ "$sent" != "$received" ]; then
    echo "demo: FAILED: the received file differs" >&2
    exit 1
fi
echo "demo: the state, from the mounts' extended attributes:"
"$d2dfs" status --once "$alice_mnt"
"$d2dfs" status --once "$bob_mnt"
python3 -c "import sys; b, s = int(sys.argv[1]), float(sys.argv[2]) - float(sys.argv[3]); \
print(f'demo: OK: {b / 2**20:.0f} MiB in {s:.2f} s = {b / s / 2**20:.1f} MiB/s')" "$bytes" "$end" "$start"
