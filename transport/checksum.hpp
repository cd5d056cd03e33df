#pragma once

// The xxh3 every segment carries, computed on the transport's hot paths (the sender filling
// header.checksum_xxh3, the receiver verifying every arrival) with the widest vector unit the
// CPU has. XXH3's value does not depend on the implementation: this equals
// messages::checksum_xxh3 for every input (tests/transport/checksum_test.cpp checks it).
//
// Why not messages::checksum_xxh3: Debian's libxxhash exports XXH3_64bits built for the
// x86-64 baseline (SSE2); XXH3_64bits_dispatch picks AVX-512 / AVX2 at run time. Measured on
// this 2-core EPYC VM, 1 MiB segments cycling through a 16 MiB ring: 16 GB/s (SSE2) vs
// 45-52 GB/s (dispatch). Verification was 83% of the zmq receiver thread's samples before.

#include <cstddef>
#include <cstdint>
#include <span>

namespace duet::transport {

/// XXH3-64 (seed 0) of `bytes`: the same value as messages::checksum_xxh3, faster on x86.
std::uint64_t checksum_xxh3(std::span<const std::byte> bytes);

} // namespace duet::transport
