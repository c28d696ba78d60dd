#!/usr/bin/env bash
# The test suite: unit tests and integration tests against a real Synapse (started by the tests
# themselves), real FUSE mounts and real WebRTC peers on loopback.
#
#   contrib/test.sh [CARGO TEST ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."

contrib/setup.sh
cargo test --locked "$@"
