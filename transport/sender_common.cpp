#include "transport/sender_common.hpp"
#include "messages/kv_segment.hpp"

namespace duet::transport {

result<void> prepare_segment(segment& seg, const options& opts, std::uint64_t window_bytes) {
  auto& h = seg.header;
  const std::size_t n = seg.payload.size();
  if (n > opts.segment_bytes_max)
    return fail(errc::oversized, std::to_string(n) + " payload bytes exceed segment_bytes_max " +
                                     std::to_string(opts.segment_bytes_max));
  if (window_bytes != 0 && n > window_bytes)
    return fail(errc::oversized, std::to_string(n) +
                                     " payload bytes exceed the receiver's window " +
                                     std::to_string(window_bytes));
  h.payload_bytes = n;
  if (auto why = messages::kv_header_problem(h); !why.empty())
    return fail(errc::malformed, "segment header: " + why);
  if (h.checksum_xxh3 == 0 || opts.always_checksum)
    h.checksum_xxh3 = messages::checksum_xxh3(seg.payload.bytes());
  return {};
}

send_faults apply_faults(fault_plan& plan, segment& seg) {
  if (plan.corrupt_next && !seg.payload.empty()) {
    seg.payload.data()[seg.payload.size() / 2] ^= std::byte{0x5a};
    plan.corrupt_next = false;
  }
  if (plan.truncate_next) {
    seg.payload.truncate(seg.payload.size() / 2);
    plan.truncate_next = false;
  }
  send_faults f{plan.duplicate_next, plan.skip_sequence_next};
  plan.duplicate_next = false;
  plan.skip_sequence_next = false;
  return f;
}

long remaining_ms(std::chrono::steady_clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::steady_clock::now());
  return left.count() > 0 ? static_cast<long>(left.count()) : 0;
}

} // namespace duet::transport
