#!/usr/bin/env bash
# The README's test command: installs what is missing, builds, and runs every test with ctest.
#   scripts/test.sh              -> build/ and its tests
#   scripts/test.sh --sanitize   -> the same tests built with -fsanitize=address,undefined
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh "$@"
build_dir=build
[ "${1:-}" = "--sanitize" ] && build_dir=build-asan
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
ctest --test-dir "$build_dir" --output-on-failure -j "${DUET_TEST_JOBS:-2}"
