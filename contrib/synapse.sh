#!/usr/bin/env bash
# A throwaway Synapse homeserver on 127.0.0.1 for tests and demos.
#
#   contrib/synapse.sh install                  create the Synapse venv (idempotent)
#   contrib/synapse.sh start DIR [--watch-pid PID] [--default-ratelimits]
#                                               configure and start a homeserver whose state lives
#                                               in DIR; prints its base URL once it answers
#   contrib/synapse.sh register DIR USER PASSWORD [--admin]
#                                               create an account (registration shared secret)
#   contrib/synapse.sh url DIR                  print the base URL of the homeserver in DIR
#   contrib/synapse.sh stop DIR                 stop it (by pid) and wait until it is gone
#
# The server: SQLite, no federation, no outbound traffic, server name "localhost", open
# registration without verification (tests register over the client API) plus a registration
# shared secret, relaxed rate limits unless --default-ratelimits. --watch-pid stops the server
# when that process exits, so a test run that dies leaves nothing behind.
#
# Environment: D2DFS_SYNAPSE_VENV (default: $XDG_CACHE_HOME/d2dfs/synapse-venv),
#              D2DFS_SYNAPSE_VERSION (a pip requirement suffix, default: any).
set -euo pipefail

venv=${D2DFS_SYNAPSE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/d2dfs/synapse-venv}
python=${PYTHON:-python3}

die() { echo "synapse.sh: $*" >&2; exit 1; }

install() {
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import synapse' 2>/dev/null; then
        return 0
    fi
    echo "synapse.sh: installing matrix-synapse into $venv" >&2
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "matrix-synapse${D2DFS_SYNAPSE_VERSION:-}" >&2
}

free_port() {
    "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

write_config() {
    local dir=$1 port=$2 ratelimits=$3
    local secret
    secret=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    mkdir -p "$dir/media_store"
    cat >"$dir/log.config" <<LOG
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: $dir/homeserver.log
    encoding: utf8
root:
  level: WARNING
  handlers: [file]
disable_existing_loggers: false
LOG
    cat >"$dir/homeserver.yaml" <<YAML
server_name: "localhost"
public_baseurl: "http://127.0.0.1:$port/"
pid_file: "$dir/homeserver.pid"
listeners:
  - port: $port
    bind_addresses: ["127.0.0.1"]
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
database:
  name: sqlite3
  args:
    database: "$dir/homeserver.db"
log_config: "$dir/log.config"
media_store_path: "$dir/media_store"
signing_key_path: "$dir/signing.key"
registration_shared_secret: "$secret"
enable_registration: true
enable_registration_without_verification: true
report_stats: false
enable_metrics: false
trusted_key_servers: []
suppress_key_server_warning: true
federation_domain_whitelist: []
url_preview_enabled: false
presence:
  enabled: false
YAML
    if [ "$ratelimits" = relaxed ]; then
        cat >>"$dir/homeserver.yaml" <<'YAML'
rc_message: { per_second: 1000, burst_count: 1000 }
rc_registration: { per_second: 1000, burst_count: 1000 }
rc_login:
  address: { per_second: 1000, burst_count: 1000 }
  account: { per_second: 1000, burst_count: 1000 }
  failed_attempts: { per_second: 1000, burst_count: 1000 }
rc_joins:
  local: { per_second: 1000, burst_count: 1000 }
  remote: { per_second: 1000, burst_count: 1000 }
rc_invites:
  per_room: { per_second: 1000, burst_count: 1000 }
  per_user: { per_second: 1000, burst_count: 1000 }
rc_admin_redaction: { per_second: 1000, burst_count: 1000 }
rc_3pid_validation: { per_second: 1000, burst_count: 1000 }
rc_key_requests: { per_second: 1000, burst_count: 1000 }
YAML
    fi
    if [ -n "${D2DFS_SYNAPSE_EXTRA_CONFIG:-}" ]; then
        printf '%s\n' "$D2DFS_SYNAPSE_EXTRA_CONFIG" >>"$dir/homeserver.yaml"
    fi
    echo "http://127.0.0.1:$port" >"$dir/url"
}

start() {
    local dir="" watch="" ratelimits=relaxed
    while [ $# -gt 0 ]; do
        case $1 in
            --watch-pid) watch=$2; shift 2 ;;
            --default-ratelimits) ratelimits=default; shift ;;
            -*) die "start: unknown option $1" ;;
            *) dir=$1; shift ;;
        esac
    done
    [ -n "$dir" ] || die "start: DIR missing"
    install
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ ! -f "$dir/homeserver.yaml" ]; then
        write_config "$dir" "$(free_port)" "$ratelimits"
        "$venv/bin/python" -m synapse.app.homeserver -c "$dir/homeserver.yaml" --generate-keys >/dev/null 2>&1
    fi
    local url
    url=$(cat "$dir/url")
    # setsid: the server outlives this script; all output goes to files so a caller reading
    # our stdout is not held open by the server.
    setsid "$venv/bin/python" -m synapse.app.homeserver -c "$dir/homeserver.yaml" \
        >"$dir/stdout.log" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$dir/server.pid"
    local waited=0
    until curl -fsS "$url/_matrix/client/versions" >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$dir/stdout.log" "$dir/homeserver.log" >&2 2>/dev/null || true
            die "Synapse exited during startup (logs in $dir)"
        fi
        [ "$waited" -lt 1200 ] || die "Synapse did not answer within 120 s (logs in $dir)"
        sleep 0.1
        waited=$((waited + 1))
    done
    if [ -n "$watch" ]; then
        setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; kill "$2" 2>/dev/null' \
            _ "$watch" "$pid" >/dev/null 2>&1 </dev/null &
    fi
    echo "$url"
}

stop() {
    local dir=${1:?stop: DIR missing}
    [ -f "$dir/server.pid" ] || return 0
    local pid
    pid=$(cat "$dir/server.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$dir/server.pid"; return 0; }
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/server.pid"
}

register() {
    local dir=${1:?register: DIR missing} user=${2:?register: USER missing} pass=${3:?register: PASSWORD missing}
    local admin=--no-admin
    [ "${4:-}" = --admin ] && admin=--admin
    "$venv/bin/register_new_matrix_user" -c "$dir/homeserver.yaml" -u "$user" -p "$pass" "$admin" \
        "$(cat "$dir/url")" >/dev/null
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
    install) install ;;
    start) start "$@" ;;
    stop) stop "$@" ;;
    register) register "$@" ;;
    url) cat "${1:?url: DIR missing}/url" ;;
    *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
