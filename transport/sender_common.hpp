#pragma once

// What every backend's send() does before moving bytes: fill payload_bytes and the checksum,
// refuse oversized segments, and apply the test fault plan.

#include "transport/transport.hpp"

namespace duet::transport {

/// Sets header.payload_bytes = payload size and header.checksum_xxh3 (when 0 or
/// opts.always_checksum); oversized past opts.segment_bytes_max or `window_bytes` (the
/// receiver's window, 0 = unknown); malformed when the shape disagrees with the size.
result<void> prepare_segment(segment& seg, const options& opts, std::uint64_t window_bytes);

/// Faults that change how a segment is sent (the others are applied to its bytes).
struct send_faults {
  bool duplicate = false;
  bool skip_sequence = false;
};

/// Consumes the plan's flags: flips one payload byte (corrupt) or halves the visible payload
/// (truncate) in `seg`, and returns the send-shaping ones.
send_faults apply_faults(fault_plan& plan, segment& seg);

/// Milliseconds left until `deadline` (0 when past), for poll-style waits.
long remaining_ms(std::chrono::steady_clock::time_point deadline);

} // namespace duet::transport
