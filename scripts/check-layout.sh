#!/usr/bin/env bash
# Fails when an #include crosses a folder boundary against the dependency direction of
# docs/architecture.md:  apps -> actors -> transport -> messages ; actors -> engine.
set -euo pipefail
root=${1:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$root"
# folder => the folders of ours it must NOT include
declare -A forbidden=(
  [engine]="messages transport actors apps bench"
  [messages]="engine transport actors apps bench"
  [transport]="engine actors apps bench"
  [actors]="apps bench"
  [bench]="apps"
)
status=0
for folder in "${!forbidden[@]}"; do
  [ -d "$folder" ] || continue
  for other in ${forbidden[$folder]}; do
    if hits=$(grep -rnE "#include [\"<]${other}/" "$folder" --include='*.hpp' --include='*.cpp' --include='*.h'); then
      echo "layout violation: $folder/ must not include $other/:"
      echo "$hits"
      status=1
    fi
  done
done
[ $status -eq 0 ] && echo "layout ok: includes point one way"
exit $status
