#!/usr/bin/env bash
# The rbee demo: start a queen, spawn a worker on a small model through the
# local hive, stream an answer, then stop everything. It runs on its own
# port and state directory, so it leaves a real queen of yours alone.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/bin"
export PATH="$bin:$PATH"

port=${RBEE_DEMO_PORT:-7839}
state=$(mktemp -d -t rbee-demo-XXXXXX)
export RBEE_QUEEN_URL="http://127.0.0.1:$port"
export XDG_DATA_HOME="$state/data" XDG_STATE_HOME="$state/state"

step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

cleanup() {
	set +e
	if [ -n "${worker_id:-}" ]; then rbee worker stop "$worker_id" >/dev/null 2>&1; fi
	rbee queen stop >/dev/null 2>&1
	rm -rf "$state"
}
trap cleanup EXIT

step "finding a small model"
model=$(cd "$root" && go run ./tools/demomodel)
echo "model: $model" >&2

step "rbee queen start"
rbee queen start

step "rbee worker spawn -m $(basename "$model") --slots 2"
spawned=$(rbee worker spawn -m "$model" --slots 2 --json)
worker_id=$(printf '%s' "$spawned" | sed -n 's/.*"id": *"\([^"]*\)".*/\1/p' | head -n1)
name=$(printf '%s' "$spawned" | sed -n 's/.*"model": *"\([^"]*\)".*/\1/p' | head -n1)

step "rbee worker list"
rbee worker list

step "rbee infer -m $name \"Once upon a time\""
rbee infer -m "$name" --max-tokens 120 "Once upon a time"

step "the same through the OpenAI API: POST /v1/completions"
echo "curl $RBEE_QUEEN_URL/v1/completions -d '{\"model\":\"$name\",\"prompt\":\"Once upon a time\",\"stream\":true}'" >&2

step "rbee worker stop $worker_id"
rbee worker stop "$worker_id"
worker_id=

step "rbee queen stop"
rbee queen stop
