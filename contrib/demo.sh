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
cleanup() {
    for user in alice bob; do
        if grep -qs " $work/$user-mnt " /proc/mounts; then
            "$d2dfs" unmount "$work/$user-mnt" || true
        fi
    done
    contrib/synapse.sh stop "$work/synapse" || true
    if [ "${D2DFS_DEMO_KEEP:-}" = 1 ]; then echo "demo: kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# Waits up to 60 s for a path to exist.
wait_for() {
    for _ in $(seq 600); do
        [ -e "$1" ] && return 0
        sleep 0.1
    done
    echo "demo: $1 did not appear" >&2
    return 1
}

url=$(contrib/synapse.sh start "$work/synapse")
echo "demo: homeserver at $url"
for user in alice bob; do
    contrib/synapse.sh register "$work/synapse" "$user" "demo-$user-password"
    D2DFS_PASSWORD="demo-$user-password" \
        "$d2dfs" --data-dir "$work/$user" login "@$user:localhost" --homeserver "$url" >/dev/null
done

# Room set-up is not d2dfs's job: do it with the plain client-server API.
token() {
    curl -fsS -X POST "$url/_matrix/client/v3/login" -H 'Content-Type: application/json' \
        -d "{\"type\":\"m.login.password\",\"identifier\":{\"type\":\"m.id.user\",\"user\":\"$1\"},\"password\":\"demo-$1-password\"}" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}
alice_token=$(token alice)
bob_token=$(token bob)
room=$(curl -fsS -X POST "$url/_matrix/client/v3/createRoom" -H "Authorization: Bearer $alice_token" \
    -H 'Content-Type: application/json' \
    -d '{"name":"d2dfs demo","preset":"private_chat","invite":["@bob:localhost"],
         "initial_state":[{"type":"m.room.encryption","state_key":"","content":{"algorithm":"m.megolm.v1.aes-sha2"}}]}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["room_id"])')
curl -fsS -X POST "$url/_matrix/client/v3/join/$room" -H "Authorization: Bearer $bob_token" \
    -H 'Content-Type: application/json' -d '{}' >/dev/null
echo "demo: alice and bob share the encrypted room $room"

for user in alice bob; do
    mkdir "$work/$user-mnt"
    "$d2dfs" --data-dir "$work/$user" mount "$work/$user-mnt"
    wait_for "$work/$user-mnt/$room"
done
echo "demo: both mounted; bob sees:"
ls -la "$work/bob-mnt"

echo "demo: making a $size file"
head -c "$size" /dev/urandom >"$work/demo.bin"
bytes=$(stat -c %s "$work/demo.bin")

echo "demo: cp demo.bin into alice's room directory (offers it)"
cp "$work/demo.bin" "$work/alice-mnt/$room/"
wait_for "$work/bob-mnt/$room/demo.bin"
echo "demo: bob's mount shows the offer:"
ls -l "$work/bob-mnt/$room/"

echo "demo: cp demo.bin out of bob's mount (accepts it and pulls the bytes device to device)"
start=$(date +%s.%N)
cp "$work/bob-mnt/$room/demo.bin" "$work/received.bin"
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
"$d2dfs" status --once "$work/alice-mnt"
"$d2dfs" status --once "$work/bob-mnt"
python3 -c "import sys; b, s = int(sys.argv[1]), float(sys.argv[2]) - float(sys.argv[3]); \
print(f'demo: OK: {b / 2**20:.0f} MiB in {s:.2f} s = {b / s / 2**20:.1f} MiB/s')" "$bytes" "$end" "$start"
