#!/usr/bin/env bash
# The d2dfs demo on a local default: starts a throwaway Synapse on 127.0.0.1, registers two
# accounts (alice, bob), logs both in with d2dfs (one profile each), creates a private room
# they share, and shows it from both sides. Everything lives in a temporary directory that is
# removed at the end (set D2DFS_DEMO_KEEP=1 to keep it).
set -euo pipefail
cd "$(dirname "$0")/.."

contrib/setup.sh
echo "demo: building d2dfs (release)" >&2
cargo build --release --locked --quiet
d2dfs=$PWD/target/release/d2dfs

work=$(mktemp -d "${TMPDIR:-/tmp}/d2dfs-demo.XXXXXX")
cleanup() {
    contrib/synapse.sh stop "$work/synapse" || true
    if [ "${D2DFS_DEMO_KEEP:-}" = 1 ]; then echo "demo: kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

url=$(contrib/synapse.sh start "$work/synapse")
echo "demo: homeserver at $url"
for user in alice bob; do
    contrib/synapse.sh register "$work/synapse" "$user" "demo-$user-password"
    D2DFS_PASSWORD="demo-$user-password" \
        "$d2dfs" --data-dir "$work/$user" login "@$user:localhost" --homeserver "$url"
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

for user in alice bob; do
    echo
    echo "== d2dfs rooms, as $user"
    "$d2dfs" --data-dir "$work/$user" rooms
done
echo
echo "demo: done"
