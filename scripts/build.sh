#!/usr/bin/env bash
# Configures and builds duet with CMake + Ninja.
#   scripts/build.sh                 -> build/            (RelWithDebInfo)
#   scripts/build.sh --sanitize      -> build-asan/       (ASan + UBSan)
# Environment: DUET_WERROR=ON turns warnings into errors (CI), DUET_JOBS sets parallelism.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=build
extra=()
if [ "${1:-}" = "--sanitize" ]; then
  build_dir=build-asan
  # -O1 keeps the sanitized tests quick; -g1 gives the reports line numbers at a fraction of
  # -g's compile time.
  extra+=(-DDUET_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g1")
fi
cmake -S . -B "$build_dir" -G Ninja -DDUET_WERROR="${DUET_WERROR:-OFF}" "${extra[@]}" >/dev/null
cmake --build "$build_dir" -j "${DUET_JOBS:-$(nproc)}"
