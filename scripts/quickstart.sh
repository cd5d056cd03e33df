#!/usr/bin/env bash
# The README's first command: installs what is missing, builds, and runs duet's main job on the
# embedded default (the bundled stories260K model, greedy).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
models=${DUET_MODELS_DIR:-../shared/models}
echo
echo "== duet generate: stories260K, greedy =="
build/duet generate --model "$models/stories260K.bin" --tokenizer "$models/tok512.bin" \
  --prompt "Once upon a time" -n 64
