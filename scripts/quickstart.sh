#!/usr/bin/env bash
# The README's first command: installs what is missing, builds, and runs duet's main job on the
# embedded default — `duet serve` with the bundled stories260K model on an in-process cluster
# (1 prefill + 1 decode node) — and sends it one streaming request, the same curl line the
# README shows. The server is stopped afterwards; `build/duet serve` starts it again.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
export DUET_MODELS_DIR=${DUET_MODELS_DIR:-$(cd .. && pwd)/shared/models}
port=${DUET_QUICKSTART_PORT:-8000}

echo
echo "== duet serve: stories260K, embedded cluster (1 prefill + 1 decode node), port $port =="
log=$(mktemp)
build/duet serve --port "$port" >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 100); do # up to 10 s for the model to load and the cluster to be placed
  curl -sf "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break
  if ! kill -0 "$server" 2>/dev/null; then
    echo "duet serve exited early:" >&2
    cat "$log" >&2
    exit 1
  fi
  sleep 0.1
done
curl -sf "http://127.0.0.1:$port/ready" >/dev/null || { echo "duet serve not ready after 10 s:" >&2; cat "$log" >&2; exit 1; }

echo '$ curl -N http://127.0.0.1:'"$port"'/v1/completions -H '"'"'Content-Type: application/json'"'"' \'
echo "    -d '{\"prompt\": \"Once upon a time\", \"max_tokens\": 64, \"stream\": true}'"
curl -sN "http://127.0.0.1:$port/v1/completions" -H 'Content-Type: application/json' \
  -d '{"prompt": "Once upon a time", "max_tokens": 64, "stream": true}'
echo
echo "== served. Start it again with: build/duet serve   (options: build/duet serve --help) =="
