#pragma once

// The receiver-side checks every backend runs on an arriving segment before handing it out:
// size, header consistency, payload length, xxh3, stream sequence and (request, epoch, layer,
// token range) uniqueness. Bounded memory: the duplicate-key set forgets its oldest keys past
// options::duplicate_keys_max. Not thread-safe (one per receiver, used by its recv()).

#include "messages/stream_frame.hpp"
#include "transport/transport.hpp"

#include <deque>
#include <set>
#include <tuple>
#include <unordered_map>

namespace duet::transport {

class arrival_checker {
public:
  explicit arrival_checker(const options& opts) : opts_(opts) {}

  /// Checks one arrival on stream `stream_id` with envelope `e` and the payload bytes that
  /// actually arrived. On success counts it as received; on failure counts the rejection.
  result<void> check(std::uint64_t stream_id, const messages::kv_envelope& e,
                     std::span<const std::byte> payload, counters& stats);

  /// Counts a rejection found before check() could run (undecodable envelope, ...).
  static error reject(counters& stats, errc code, std::string context);

  /// Forgets a stream's sequence (the sender said bye or reconnected).
  void forget_stream(std::uint64_t stream_id) { next_sequence_.erase(stream_id); }

private:
  using key = std::tuple<std::uint64_t, std::uint32_t, std::uint32_t, std::uint32_t, std::uint32_t>;

  const options& opts_;
  std::unordered_map<std::uint64_t, std::uint64_t> next_sequence_; ///< stream -> expected seq
  std::set<key> seen_;
  std::deque<key> seen_order_; ///< oldest first, for eviction
};

} // namespace duet::transport
