#pragma once

// The receiver-side checks every backend runs on an arriving segment before handing it out:
// size, header consistency, payload length, xxh3, stream sequence and (request, epoch, layer,
// token range) uniqueness. Bounded memory: the duplicate-key set forgets its oldest keys past
// options::duplicate_keys_max. Not thread-safe (one per receiver, used by its recv()).

#include "messages/stream_frame.hpp"
#include "transport/transport.hpp"

#include <deque>
#include <optional>
#include <set>
#include <tuple>
#include <unordered_map>

namespace duet::transport {

class arrival_checker {
public:
  explicit arrival_checker(const options& opts) : opts_(opts) {}

  /// Checks one arrival on stream `stream_id` with envelope `e` and the payload bytes that
  /// actually arrived. On success counts it as received; on failure counts the rejection.
  /// `payload_xxh3`: the payload's xxh3 where the backend hashed it while copying it in
  /// (checksum_xxh3_stream); otherwise check() hashes the payload.
  result<void> check(std::uint64_t stream_id, const messages::kv_envelope& e,
                     std::span<const std::byte> payload, counters& stats,
                     std::optional<std::uint64_t> payload_xxh3 = std::nullopt);

  /// Rejects an arrival whose payload the backend would not take (more bytes than allowed):
  /// the stream's sequence advances as for any damaged arrival, so the next one is in order.
  error reject_arrival(std::uint64_t stream_id, const messages::kv_envelope& e, errc code,
                       std::string context, counters& stats);

  /// Counts a rejection found before check() could run (undecodable envelope, ...).
  static error reject(counters& stats, errc code, std::string context);

  /// Forgets a stream's sequence (the sender said bye or reconnected).
  void forget_stream(std::uint64_t stream_id) { next_sequence_.erase(stream_id); }

private:
  /// Moves the stream's expected sequence past `e` (unless `e` is older); returns ok,
  /// duplicate or out_of_order, and the sequence that was expected.
  errc advance_sequence(std::uint64_t stream_id, const messages::kv_envelope& e,
                        std::uint64_t& expected);

  using key = std::tuple<std::uint64_t, std::uint32_t, std::uint32_t, std::uint32_t, std::uint32_t>;

  const options& opts_;
  std::unordered_map<std::uint64_t, std::uint64_t> next_sequence_; ///< stream -> expected seq
  std::set<key> seen_;
  std::deque<key> seen_order_; ///< oldest first, for eviction
};

} // namespace duet::transport
