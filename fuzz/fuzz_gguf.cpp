// Fuzzes the GGUF parser (model files are untrusted input too: a user may be handed one). It must
// return an error value for every malformed input: no crash, no out-of-bounds read, no UB.
#include "engine/gguf_reader.hpp"

#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto result = duet::engine::parse_gguf_bytes(data, size);
  // A file that parses has at least its header: 4-byte magic, version, two counts.
  if (result.error.empty() && size < 24) __builtin_trap();
  return 0;
}
