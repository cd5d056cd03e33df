#!/usr/bin/env bash
# Installs the Debian 12 packages duet builds with. Idempotent: a fast no-op when all are there.
# Needs root (or sudo) only when something is missing.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git clang libclang-rt-14-dev clang-format
  libcaf-dev                 # CAF 0.17: the actor system
  capnproto libcapnp-dev     # Cap'n Proto: message schemas and the compiler
  libzmq3-dev cppzmq-dev     # ZeroMQ transport
  libfabric-dev libfabric-bin # libfabric transport (shm, tcp, verbs, efa)
  catch2                     # tests (v2)
  libcli11-dev libspdlog-dev libfmt-dev nlohmann-json3-dev libcpp-httplib-dev
  libtomlplusplus-dev libxxhash-dev prometheus-cpp-dev
  curl                       # the README's request example
)
# The client tests use Node.js + npm (the official openai package). Many machines carry a
# Node.js of their own outside dpkg; only when none is on PATH do we take Debian's.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  packages+=(nodejs npm)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo to apt-get install ${missing[*]}" >&2; exit 1; }
  sudo_cmd=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
