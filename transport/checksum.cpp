#include "transport/checksum.hpp"

#include <xxhash.h>

#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64) || defined(_M_IX86)
#define DUET_XXH3_DISPATCH 1
#include <xxh_x86dispatch.h> // declares XXH3_64bits_dispatch (libxxhash >= 0.8 exports it)
#endif

namespace duet::transport {

std::uint64_t checksum_xxh3(std::span<const std::byte> bytes) {
#ifdef DUET_XXH3_DISPATCH
  return XXH3_64bits_dispatch(bytes.data(), bytes.size());
#else
  return XXH3_64bits(bytes.data(), bytes.size());
#endif
}

} // namespace duet::transport
