#!/usr/bin/env bash
# The filesystem benchmark: two d2dfs mounts (two accounts, one local Synapse, release build)
# and the baselines measured in the same run. Prints one table; copy it into RESULTS.md.
#
#   contrib/bench/fs.sh
#
# Sizes: D2DFS_BENCH_SIZE (default 1G) for the copies, D2DFS_BENCH_BIG (default 4G) for the
# memory and random-read figures, D2DFS_BENCH_OFFERS (default 1000) for the listing,
# D2DFS_BENCH_LANES (default 0, as `mount`) for the mounts' --lanes.
set -euo pipefail
cd "$(dirname "$0")/../.."
size=${D2DFS_BENCH_SIZE:-1G}
big=${D2DFS_BENCH_BIG:-4G}
offers=${D2DFS_BENCH_OFFERS:-1000}

contrib/setup.sh
cargo build --release --locked --quiet
d2dfs=$PWD/target/release/d2dfs

# Baseline 0: one raw webrtc-rs data channel (64 KiB messages, the range protocol's, and the
# kernel's default socket buffers), this machine, this run: the transport benchmark's row.
webrtc_one=$(D2DFS_BENCH_BYTES=268435456 D2DFS_BENCH_SHAPES="64:1:1/stock" \
    cargo bench --locked --quiet --bench transport 2>/dev/null | awk -F'|' '/1 conn x 1 chan, stock sockets/ {gsub(/ /, "", $3); print $3}')
aiortc_python=${D2DFS_AIORTC_VENV:-$HOME/.cache/d2dfs/aiortc-venv}/bin/python

work=$(mktemp -d "${TMPDIR:-/tmp}/d2dfs-bench.XXXXXX")
# shellcheck source=contrib/two-mounts.sh
. contrib/two-mounts.sh
trap 'two_mounts_cleanup; rm -rf "$work" "${landing:-}"' EXIT
mount_args=(--cache-size 64M --lanes "${D2DFS_BENCH_LANES:-0}")
two_mounts_up
alice_room=$alice_mnt/$room
bob_room=$bob_mnt/$room

now() { date +%s.%N; }
mbps() { python3 -c "import sys; print(f'{int(sys.argv[1]) / (float(sys.argv[3]) - float(sys.argv[2])) / 1e6:.1f}')" "$@"; }
results=()
row() { results+=("| $1 | $2 | $3 |"); echo "bench: $1: $2 ($3)" >&2; }

head -c "$size" /dev/urandom >"$work/payload.bin"
bytes=$(stat -c %s "$work/payload.bin")
landing=$(mktemp -d /dev/shm/d2dfs-bench.XXXXXX)

# Baseline 1: raw loopback TCP, the same bytes, sendfile to a reader; `tcp_to` FILE writes what
# it reads to FILE, `tcp_to -` discards it (iperf-style).
tcp_to() {
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    python3 - "$port" "$1" <<'EOF' &
import socket, sys
server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
conn, _ = server.accept()
buffer = bytearray(1 << 20)
out = None if sys.argv[2] == "-" else open(sys.argv[2], "wb")
while n := conn.recv_into(buffer):
    if out:
        out.write(memoryview(buffer)[:n])
if out:
    out.close()
EOF
    sleep 0.5
    local t0 t1
    t0=$(now)
    python3 - "$port" "$work/payload.bin" <<'EOF'
import socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1]))) as conn, open(sys.argv[2], "rb") as f:
    conn.sendfile(f)
EOF
    wait
    t1=$(now)
    mbps "$bytes" "$t0" "$t1"
}
tcp_disk=$(tcp_to "$work/tcp.out")
rm -f "$work/tcp.out"
tcp_path=$(tcp_to -)

# Baseline 2: two aiortc peers, a plain MSC2354 transfer (includes their login and signalling).
t0=$(now)
"$aiortc_python" tests/peers/aiortc_peer.py --homeserver "$url" --user @alice:localhost \
    --password demo-alice-password --room "$room" --timeout 600 send "$work/payload.bin" 2>/dev/null &
"$aiortc_python" tests/peers/aiortc_peer.py --homeserver "$url" --user @bob:localhost \
    --password demo-bob-password --room "$room" --timeout 600 recv "$work/aiortc.out" 2>/dev/null
t1=$(now)
wait
aiortc=$(mbps "$bytes" "$t0" "$t1")
rm -f "$work/aiortc.out"
# The aiortc offer went to bob's mount too; it is over now.
sleep 2

# cp into a room directory vs into tmpfs.
t0=$(now); cp "$work/payload.bin" "$landing/tmpfs.bin"; t1=$(now)
tmpfs=$(mbps "$bytes" "$t0" "$t1")
rm -f "$landing/tmpfs.bin"
t0=$(now); cp "$work/payload.bin" "$alice_room/"; t1=$(now)
spool=$(mbps "$bytes" "$t0" "$t1")

# cp out of the receiving mount: to local disk (SPEC §6; the TCP and aiortc baselines write a
# file there too), then a second offer of the same bytes to /dev/null, the path alone (as the
# raw channel's and TCP's discarding baselines). On these VMs the first figure also measures
# the memory under the new file: memory the guest freed goes back to the host (virtio-balloon
# free page reporting) and its first touch afterwards costs ~2.5 s/GiB (RESULTS.md).
ln -s "$work/payload.bin" "$alice_room/path.bin"
wait_for "$bob_room/payload.bin"
t0=$(now); cp "$bob_room/payload.bin" "$work/received.bin"; t1=$(now)
out_disk=$(mbps "$bytes" "$t0" "$t1")
cmp -s "$work/payload.bin" "$work/received.bin" || { echo "bench: the copy differs" >&2; exit 1; }
rm -f "$work/received.bin"
wait_for "$bob_room/path.bin"
t0=$(now); cp "$bob_room/path.bin" /dev/null; t1=$(now)
out_path=$(mbps "$bytes" "$t0" "$t1")
# The mount checked every byte against the offer's SHA-256 before calling it complete.
state=$(getfattr --absolute-names --only-values -n user.d2dfs.state "$bob_room/path.bin")
[ "$state" = complete ] || { echo "bench: the copy to /dev/null ended $state" >&2; exit 1; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.3f}')" "$1" "$2"; }
connections=$(getfattr --absolute-names --only-values -n user.d2dfs.connections "$bob_room/payload.bin" 2>/dev/null || echo 1)
row "cp $size out of the receiving mount to local disk ($connections connections)" "$out_disk MB/s" "$(ratio "$out_disk" "$aiortc")x aiortc pair ($aiortc MB/s), $(ratio "$out_disk" "$tcp_disk")x loopback TCP to disk ($tcp_disk MB/s)"
row "cp $size out of the receiving mount to /dev/null" "$out_path MB/s" "$(ratio "$out_path" "$webrtc_one")x one webrtc-rs channel ($webrtc_one MB/s), $(ratio "$out_path" "$tcp_path")x loopback TCP to nowhere ($tcp_path MB/s)"
row "cp $size into a room directory (spool)" "$spool MB/s" "$(ratio "$spool" "$tmpfs")x tmpfs ($tmpfs MB/s)"

# open() to first byte, median of 5 fresh offers.
for i in 1 2 3 4 5; do head -c 1M /dev/urandom >"$alice_room/first-$i.bin"; done
for i in 1 2 3 4 5; do wait_for "$bob_room/first-$i.bin"; done
first=$(python3 - "$bob_room" <<'EOF'
import statistics, sys, time
samples = []
for i in range(1, 6):
    t0 = time.monotonic()
    with open(f"{sys.argv[1]}/first-{i}.bin", "rb") as f:
        f.read(1)
    samples.append((time.monotonic() - t0) * 1000)
print(f"{statistics.median(samples):.0f}")
EOF
)
row "open() to first byte (median of 5)" "$first ms" "target 300 ms"

# A large sparse offer (random bytes 3 GiB in): peak memory of a whole read, and what a
# 1 MiB read deep inside moves.
truncate -s "$big" "$work/big.img"
head -c 8M /dev/urandom | dd of="$work/big.img" bs=1M seek=3072 conv=notrunc status=none
ln -s "$work/big.img" "$alice_room/deep.img"
ln -s "$work/big.img" "$alice_room/whole.img"
wait_for "$bob_room/deep.img"
wait_for "$bob_room/whole.img"
dd if="$bob_room/deep.img" of=/dev/null bs=1M skip=3072 count=1 status=none
moved=$(getfattr --absolute-names --only-values -n user.d2dfs.bytes "$bob_room/deep.img")
row "bytes moved for a 1 MiB read 3 GiB into $big" "$moved" "$(python3 -c "print(f'{$moved / 2**20:.1f} MiB')")"
pid=$(getfattr --absolute-names --only-values -n user.d2dfs.pid "$bob_mnt")
cat "$bob_room/whole.img" >/dev/null
rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
row "receiving mount's peak RSS, $big read whole, 64 MiB cache" "$((rss / 1024)) MiB" "target cache + 64 MiB = 128 MiB"

# ls of many live offers.
mkdir "$work/many"
for i in $(seq "$offers"); do echo "$i" >"$work/many/offer-$i.txt"; done
cp "$work"/many/* "$alice_room/"
for _ in $(seq 1200); do
    [ "$(ls "$bob_room" | grep -c '^offer-')" -ge "$offers" ] && break
    sleep 0.5
done
listing=$(python3 - "$bob_room" <<'EOF'
import os, statistics, sys, time
samples = []
for _ in range(5):
    t0 = time.monotonic()
    for entry in os.scandir(sys.argv[1]):
        entry.stat()
    samples.append((time.monotonic() - t0) * 1000)
print(f"{statistics.median(samples):.1f}")
EOF
)
row "ls -l of a room with $offers live offers (median of 5)" "$listing ms" "target 50 ms"

echo
echo "| figure | value | beside |"
echo "|---|---|---|"
printf '%s\n' "${results[@]}"
