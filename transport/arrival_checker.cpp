#include "transport/arrival_checker.hpp"
#include "messages/kv_segment.hpp"

namespace duet::transport {

namespace {

std::string describe(const messages::kv_segment_header& h) {
  return "request " + std::to_string(h.request_id) + " epoch " + std::to_string(h.epoch) +
         " layer " + std::to_string(h.layer) + " tokens [" + std::to_string(h.token_begin) + ", " +
         std::to_string(h.token_end) + ")";
}

} // namespace

error arrival_checker::reject(counters& stats, errc code, std::string context) {
  stats.rejected[static_cast<std::size_t>(code)].fetch_add(1, std::memory_order_relaxed);
  return fail(code, std::move(context));
}

errc arrival_checker::advance_sequence(std::uint64_t stream_id, const messages::kv_envelope& e,
                                       std::uint64_t& expected) {
  // The sequence advances for every arrival, damaged or not: a damaged segment was still
  // received, so the next one is not "out of order".
  auto it = next_sequence_.try_emplace(stream_id, 0).first;
  expected = it->second;
  if (e.sequence < expected) return errc::duplicate;
  it->second = e.sequence + 1;
  return e.sequence > expected ? errc::out_of_order : errc::ok;
}

error arrival_checker::reject_arrival(std::uint64_t stream_id, const messages::kv_envelope& e,
                                      errc code, std::string context, counters& stats) {
  std::uint64_t expected = 0;
  (void)advance_sequence(stream_id, e, expected);
  return reject(stats, code, describe(e.header) + ": " + std::move(context));
}

result<void> arrival_checker::check(std::uint64_t stream_id, const messages::kv_envelope& e,
                                    std::span<const std::byte> payload, counters& stats,
                                    std::optional<std::uint64_t> payload_xxh3) {
  const auto& h = e.header;
  std::uint64_t expected = 0;
  const errc order = advance_sequence(stream_id, e, expected);

  if (h.payload_bytes > opts_.segment_bytes_max || payload.size() > opts_.segment_bytes_max)
    return reject(stats, errc::oversized,
                  describe(h) + ": " +
                      std::to_string(std::max<std::uint64_t>(h.payload_bytes, payload.size())) +
                      " bytes exceeds segment_bytes_max " +
                      std::to_string(opts_.segment_bytes_max));
  if (auto why = messages::kv_header_problem(h); !why.empty())
    return reject(stats, errc::malformed, describe(h) + ": " + why);
  if (payload.size() != h.payload_bytes)
    return reject(stats, errc::truncated,
                  describe(h) + ": " + std::to_string(payload.size()) +
                      " payload bytes arrived, header says " + std::to_string(h.payload_bytes));
  if ((payload_xxh3 ? *payload_xxh3 : messages::checksum_xxh3(payload)) != h.checksum_xxh3)
    return reject(stats, errc::corrupt,
                  describe(h) + ": xxh3 of the payload differs from the header's");
  if (order == errc::duplicate)
    return reject(stats, errc::duplicate,
                  describe(h) + ": stream sequence " + std::to_string(e.sequence) +
                      " already received (expected " + std::to_string(expected) + ")");
  if (order == errc::out_of_order)
    return reject(stats, errc::out_of_order,
                  describe(h) + ": stream sequence " + std::to_string(e.sequence) + ", expected " +
                      std::to_string(expected) + " (segments missing)");
  key k{h.request_id, h.epoch, h.layer, h.token_begin, h.token_end};
  if (seen_.count(k) != 0)
    return reject(stats, errc::duplicate, describe(h) + ": already received");
  seen_.insert(k);
  seen_order_.push_back(k);
  while (seen_order_.size() > opts_.duplicate_keys_max) {
    seen_.erase(seen_order_.front());
    seen_order_.pop_front();
  }
  stats.segments_received.fetch_add(1, std::memory_order_relaxed);
  stats.bytes_received.fetch_add(payload.size(), std::memory_order_relaxed);
  return {};
}

} // namespace duet::transport
