#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, -fsanitize=fuzzer,address,undefined) in build-fuzz and
# runs each for a bounded time. Usage: scripts/fuzz.sh [seconds-per-target, default 20]
# Corpora live in build-fuzz/corpus/<target> (seeded from valid messages on first run);
# crashes are written to build-fuzz/findings/<target>/ and make this script fail.
set -euo pipefail
seconds=${1:-20}
root=$(cd "$(dirname "$0")/.." && pwd)
build="$root/build-fuzz"
CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DDUET_FUZZ=ON -DDUET_WERROR=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBUILD_TESTING=OFF \
  -DCMAKE_CXX_FLAGS="-fsanitize=fuzzer-no-link,address,undefined" \
  -DCMAKE_C_FLAGS="-fsanitize=fuzzer-no-link,address,undefined" >/dev/null
targets=(fuzz_stream_frame fuzz_control fuzz_gguf fuzz_openai_request)
cmake --build "$build" --target "${targets[@]}" fuzz_seeds -j2
"$build/fuzz/fuzz_seeds" "$build/corpus"
models=${DUET_MODELS_DIR:-$root/../shared/models}
mkdir -p "$build/corpus/fuzz_gguf"
[ -f "$models/stories260K.gguf" ] && cp -f "$models/stories260K.gguf" "$build/corpus/fuzz_gguf/stories260K.gguf"
status=0
for t in "${targets[@]}"; do
  corpus="$build/corpus/$t"
  findings="$build/findings/$t"
  mkdir -p "$corpus" "$findings"
  echo "== $t for ${seconds}s"
  if ! "$build/fuzz/$t" "$corpus" -max_total_time="$seconds" -max_len="$( [ "$t" = fuzz_gguf ] && echo 65536 || echo 4096 )" -timeout=10 \
       -rss_limit_mb=2048 -artifact_prefix="$findings/" -print_final_stats=1 2>"$build/$t.log"; then
    status=1
    echo "FINDING in $t: see $findings and $build/$t.log"
  fi
  grep -E "stat::number_of_executed_units|stat::peak_rss_mb|^#[0-9]+ *DONE" "$build/$t.log" || true
done
exit $status
