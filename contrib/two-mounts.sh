# Sourced by contrib/demo.sh and contrib/bench/fs.sh: a throwaway Synapse, two accounts
# (alice, bob) logged in with one d2dfs profile each, a private room they share, and both
# accounts' filesystems mounted. Expects $d2dfs (the binary) and $work (a scratch directory);
# sets $url, $room, $alice_mnt, $bob_mnt. `two_mounts_cleanup` undoes it all.
#
#   two_mounts_up [encrypted]

wait_for() {
    for _ in $(seq 600); do
        [ -e "$1" ] && return 0
        sleep 0.1
    done
    echo "$1 did not appear" >&2
    return 1
}

two_mounts_cleanup() {
    for user in alice bob; do
        if grep -qs " $work/$user-mnt " /proc/mounts; then
            "$d2dfs" unmount "$work/$user-mnt" || true
        fi
    done
    contrib/synapse.sh stop "$work/synapse" || true
}

two_mounts_up() {
    local encryption=""
    if [ "${1:-}" = encrypted ]; then
        encryption=',"initial_state":[{"type":"m.room.encryption","state_key":"","content":{"algorithm":"m.megolm.v1.aes-sha2"}}]'
    fi
    url=$(contrib/synapse.sh start "$work/synapse")
    for user in alice bob; do
        contrib/synapse.sh register "$work/synapse" "$user" "demo-$user-password"
        D2DFS_PASSWORD="demo-$user-password" \
            "$d2dfs" --data-dir "$work/$user" login "@$user:localhost" --homeserver "$url" >/dev/null
    done
    # Room set-up is not d2dfs's job: do it with the plain client-server API.
    local alice_token bob_token
    alice_token=$(_token alice)
    bob_token=$(_token bob)
    room=$(curl -fsS -X POST "$url/_matrix/client/v3/createRoom" -H "Authorization: Bearer $alice_token" \
        -H 'Content-Type: application/json' \
        -d "{\"name\":\"d2dfs\",\"preset\":\"private_chat\",\"invite\":[\"@bob:localhost\"]$encryption}" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["room_id"])')
    curl -fsS -X POST "$url/_matrix/client/v3/join/$room" -H "Authorization: Bearer $bob_token" \
        -H 'Content-Type: application/json' -d '{}' >/dev/null
    alice_mnt=$work/alice-mnt
    bob_mnt=$work/bob-mnt
    for user in alice bob; do
        mkdir -p "$work/$user-mnt"
        "$d2dfs" --data-dir "$work/$user" mount "$work/$user-mnt" "${mount_args[@]}"
        wait_for "$work/$user-mnt/$room"
    done
}

_token() {
    curl -fsS -X POST "$url/_matrix/client/v3/login" -H 'Content-Type: application/json' \
        -d "{\"type\":\"m.login.password\",\"identifier\":{\"type\":\"m.id.user\",\"user\":\"$1\"},\"password\":\"demo-$1-password\"}" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}

mount_args=()
