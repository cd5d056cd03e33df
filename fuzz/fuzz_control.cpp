// Fuzzes every control-plane message reader with the same bytes, checking that each returns a
// value or a problem, and that accepted values satisfy the validation they promise.
#include "messages/control.hpp"

#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace duet::messages;
  auto bytes = std::span<const std::byte>(reinterpret_cast<const std::byte*>(data), size);
  if (auto m = decode_prefill_task(bytes); m.ok() && m->layer_end <= m->layer_begin)
    __builtin_trap();
  (void)decode_prefill_result(bytes);
  (void)decode_decode_admission(bytes);
  if (auto m = decode_token_chunk(bytes); m.ok() && m->tokens.size() != m->positions.size())
    __builtin_trap();
  (void)decode_node_hello(bytes);
  (void)decode_heartbeat(bytes);
  return 0;
}
