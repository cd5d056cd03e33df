#!/usr/bin/env bash
# Real-client test: the official `openai` npm package against `duet serve`.
# Installs the locked client (npm ci into tests/clients/node_modules), starts
# `build/duet serve --port 0 --api-key ...`, runs `node --test`, stops the server.
#   scripts/test-clients.sh [path/to/duet]      (default: build/duet)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
duet=${1:-$root/build/duet}
for tool in node npm; do
  if ! command -v "$tool" >/dev/null; then
    echo "test-clients: '$tool' is not installed: install Node.js 18+ and npm (Debian: apt-get install nodejs npm)" >&2
    exit 1
  fi
done
[ -x "$duet" ] || { echo "test-clients: $duet not found: build first (scripts/build.sh)" >&2; exit 1; }

cd "$root/tests/clients"
npm ci --no-audit --no-fund --loglevel=error

log=$(mktemp)
out=$(mktemp)
key="test-key-$$"
"$duet" serve --port 0 --api-key "$key" >"$out" 2>"$log" &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -f "$log" "$out"
}
trap cleanup EXIT

port=""
for _ in $(seq 1 300); do # bounded: 30 s
  port=$(sed -n 's#^listening on http://127.0.0.1:\([0-9]*\)$#\1#p' "$out")
  [ -n "$port" ] && break
  kill -0 "$pid" 2>/dev/null || { echo "test-clients: duet serve exited:" >&2; cat "$log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$port" ] || { echo "test-clients: duet serve did not start:" >&2; cat "$log" >&2; exit 1; }

DUET_BASE_URL="http://127.0.0.1:$port/v1" DUET_API_KEY="$key" node --test
