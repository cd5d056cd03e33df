// Fuzzes the reader of transport stream frames (TransportFrame) and the receiver-side arrival
// checks run on what it accepts: any bytes must give a value or a problem, never a crash,
// a sanitizer report or a kj::Exception escaping.
#include "messages/stream_frame.hpp"
#include "transport/arrival_checker.hpp"

#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace duet;
  auto bytes = std::span<const std::byte>(reinterpret_cast<const std::byte*>(data), size);
  auto frame = messages::decode_frame(bytes, std::size_t{1} << 20);
  if (!frame) return 0;
  if (auto* e = std::get_if<messages::kv_envelope>(&*frame)) {
    // An accepted envelope must have a consistent header; run the arrival checks on its
    // inline payload (or on none) as a receiver would.
    if (!messages::kv_header_problem(e->header).empty()) __builtin_trap();
    transport::options opts;
    opts.segment_bytes_max = std::size_t{1} << 20;
    transport::arrival_checker checker(opts);
    transport::counters stats;
    (void)checker.check(e->stream_id, *e, e->inline_payload, stats);
    (void)checker.check(e->stream_id, *e, e->inline_payload, stats); // the duplicate path
    // Re-encoding what was read must read back the same header.
    auto again = messages::decode_frame(messages::encode_frame(*e), std::size_t{1} << 20);
    if (!again || !(std::get<messages::kv_envelope>(*again).header == e->header)) __builtin_trap();
  }
  return 0;
}
