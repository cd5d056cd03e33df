#pragma once

// The frames of a transport stream (TransportFrame in duet.capnp): KV segment envelopes and
// the sender/receiver handshake (hello, credit, error, bye). Builders and validating readers.
//
// Copies of the payload made here:
//   - frame_message with an inline payload: none when the payload is 8-byte aligned and a
//     whole number of words (referenceExternalData makes it a segment of the message); one
//     copy otherwise. flat() always copies (header + payload) — small frames only.
//   - decode_frame: none when the input is 8-byte aligned (the view points into it); one copy
//     of the payload otherwise (into kv_envelope::owned_payload).

#include "messages/codec.hpp"
#include "messages/kv_segment.hpp"

#include <capnp/message.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <variant>
#include <vector>

namespace duet::messages {

/// Where a segment's payload bytes travel.
enum class payload_placement : std::uint8_t {
  inline_bytes,  ///< inside the envelope message
  next_frame,    ///< the next frame of the stream (zmq multipart)
  remote_region, ///< written by RMA into the receiver's window at remote_offset
};

struct kv_envelope {
  kv_segment_header header;
  std::uint64_t sequence = 0;  ///< per-stream sequence: 0, 1, 2, ...
  std::uint64_t stream_id = 0; ///< the sender's stream (fabric; zmq knows it by identity)
  payload_placement placement = payload_placement::next_frame;
  std::uint64_t remote_offset = 0; ///< remote_region: offset in the receiver window
  std::uint64_t remote_length = 0; ///< remote_region: bytes written there (== payload_bytes)
  /// inline_bytes: the payload. Building: the caller's bytes (must outlive the frame_message).
  /// Reading: a view into the bytes read, or into owned_payload when those were misaligned.
  std::span<const std::byte> inline_payload;
  std::vector<std::byte> owned_payload;
};

struct stream_hello {
  std::uint32_t protocol_version = 1;
  std::uint64_t stream_id = 0;
  std::vector<std::byte> endpoint_name; ///< fabric: the sender's fi_getname
};

struct credit_grant {
  std::uint64_t stream_id = 0;
  std::uint64_t grant_bytes = 0;
  std::uint64_t window_bytes = 0;
  std::uint64_t segment_bytes_max = 0;
  std::uint64_t window_address = 0; ///< fabric RMA target address (0 without RMA)
  std::uint64_t window_key = 0;     ///< fabric RMA key
  /// First credit: an idle sender sends stream_alive at least this often, or the receiver
  /// ends its stream as dead (0: not needed).
  std::uint32_t keepalive_ms = 0;
  /// First credit (fabric): this receiver sends receipts (receipt_through), which the sender's
  /// flush() waits for where a completion does not mean delivery.
  bool receipts = false;
  /// A receipt: every segment with a sequence below this was taken by the receiver (its bytes
  /// checked, then accepted or rejected). 0: not a receipt.
  std::uint64_t receipt_through = 0;
};

/// An error for the peer: code numbered as transport::errc / ErrorCode, context for humans.
struct error_info {
  std::uint16_t code = 0;
  std::string context;
};

/// The sender closes its stream: the receiver may free what the stream held (fabric: its
/// window). stream_id 0: not said (zmq knows the stream by its connection); on the wire
/// TransportFrame.bye, else TransportFrame.end.
struct stream_bye {
  std::uint64_t stream_id = 0;
};

/// An idle sender still lives (sent when the receiver's first credit asks, keepalive_ms).
struct stream_alive {
  std::uint64_t stream_id = 0;
};

using stream_frame =
    std::variant<kv_envelope, stream_hello, credit_grant, error_info, stream_bye, stream_alive>;

/// Protocol version this build speaks (StreamHello.protocolVersion); readers take 1 too.
/// 2: the sender answers Credit.keepaliveMs with StreamAlive frames while idle.
inline constexpr std::uint32_t stream_protocol_version = 2;

/// A frame built for output. segments() is what goes on the wire (with the segment table
/// from capnp::writeMessage's layout if needed); flat() is one contiguous copy.
class frame_message {
public:
  explicit frame_message(const stream_frame& frame);
  frame_message(const frame_message&) = delete;
  frame_message& operator=(const frame_message&) = delete;

  /// The message's segments; an inline payload is its own segment (not copied).
  kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments() {
    return builder_.getSegmentsForOutput();
  }
  /// Segment table + segments in one buffer (copies everything).
  std::vector<std::byte> flat() { return flat_bytes(builder_); }
  /// True when an inline payload was copied into the message (misaligned or odd length).
  bool payload_copied() const { return payload_copied_; }

private:
  capnp::MallocMessageBuilder builder_;
  bool payload_copied_ = false;
};

/// Flat bytes of one frame (copies; for control frames and envelopes without inline payload).
std::vector<std::byte> encode_frame(const stream_frame& frame);

/// Reads one flat frame and validates it: KV header consistent (kv_header_problem), payload
/// size within segment_bytes_max (oversized), inline payload length == payload_bytes
/// (truncated), remote region within segment_bytes_max, known union members, hello
/// version. Traversal limit: kv_limits(segment_bytes_max).
decoded<stream_frame> decode_frame(std::span<const std::byte> bytes, std::size_t segment_bytes_max);

} // namespace duet::messages
