#!/usr/bin/env bash
# Installs what tests/offline.rs starts: Debian's mosquitto broker (a real MQTT broker, not a
# test double) and python3 for the HTTP receiver. Idempotent; run by the README's test
# command and .ci/run.
set -euo pipefail
. "$(dirname "$0")/../../cross/common.sh"
ensure_apt mosquitto python3
