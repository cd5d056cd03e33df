#pragma once

// One interface for moving KV segments (header + payload bytes) from a prefill node to a decode
// node, with three backends behind it: inproc (same process, no copy), zmq (tcp, ipc) and
// fabric (libfabric RDM: shm, tcp, udp, verbs, efa; RMA writes into receiver memory, or tagged
// sends into posted receives where the provider has no RMA: options::fabric_payload).
//
// The receiver binds first and reports its concrete address; the control plane carries that
// string to the sender, which connects. Flow control is receiver-driven: each sender may have
// at most `window_bytes` of payload that the receiver has not yet released (received buffers
// destroyed). A receiver that stops releasing buffers stops the sender: send() waits for credit
// up to its timeout and then returns errc::timeout, so a slow or dead receiver costs the sender
// bounded memory and bounded time, never a hang.
//
// Every segment is checked on arrival, before recv() returns it: envelope well-formed, header
// consistent (shape vs payload_bytes), payload length == payload_bytes (else truncated), xxh3
// == checksum_xxh3 (else corrupt), not larger than segment_bytes_max (oversized), stream
// sequence in order (duplicate / out_of_order), and (request, epoch, layer, token range) not
// seen before (duplicate). A rejected segment is dropped, counted under its reason, and reported
// as recv()'s error; the next recv() carries on with the stream.
//
// Thread safety: a sender or receiver is used by one thread at a time (like a zmq socket);
// distinct objects are independent and may live on different threads. stats() may be called
// from any thread. Received payload buffers may be released on any thread.
//
// Example (the whole API):
//   auto rx = transport::listen("zmq+tcp://127.0.0.1:0");           // result<unique_ptr<receiver>>
//   auto tx = transport::connect((*rx)->address());                   // result<unique_ptr<sender>>
//   (*tx)->send({header, std::move(payload)}, 5000ms);               // result<void>
//   auto seg = (*rx)->recv(5000ms);                                   // result<segment>

#include "messages/kv_segment.hpp"
#include "transport/address.hpp"
#include "transport/buffer.hpp"
#include "transport/error.hpp"

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace duet::transport {

using std::chrono::milliseconds;

/// One KV segment in motion: the header and its payload bytes (K then V, see kv_segment.hpp).
struct segment {
  messages::kv_segment_header header;
  buffer payload;
};

/// Limits and defaults shared by senders and receivers. Every bound has a reason.
struct options {
  /// Largest payload accepted. 64 MiB holds one layer of KV for 8k tokens of an 8-head x 128
  /// f32 model (2*8192*8*128*4 = 64 MiB); bigger ranges are split into several segments.
  std::size_t segment_bytes_max = std::size_t{64} << 20;
  /// Receiver: payload bytes each sender may have outstanding (sent, not yet released by the
  /// receiver). Must be >= segment_bytes_max. fabric registers this much memory per sender.
  std::size_t window_bytes = std::size_t{128} << 20;
  /// Receiver (fabric): senders' streams held at once, so at most this many windows. A hello
  /// beyond it is refused: that sender's first send fails with oversized and says why.
  std::size_t streams_max = 64;
  /// Receiver (fabric over tcp, udp, verbs, efa): a stream whose sender has said nothing for this
  /// long is ended as dead (a killed process says no goodbye) and its window freed; a live
  /// sender that has nothing to send says it lives every quarter of it (Credit.keepaliveMs).
  /// shm ends a dead sender's stream by its pid instead. 0: never.
  std::uint32_t stream_silence_ms = 10000;
  /// Receiver: (request, epoch, layer, token range) keys remembered for duplicate detection;
  /// older keys are forgotten first (bounded memory).
  std::size_t duplicate_keys_max = 65536;
  /// Sender: compute checksum_xxh3 even when the header already carries one (0 = compute).
  bool always_checksum = false;

  /// fabric only: how a segment's payload bytes travel (the envelope is always a tagged
  /// control message).
  enum class fabric_payload_mode : std::uint8_t {
    automatic, ///< RMA where the provider offers FI_RMA with 8 bytes of remote CQ data, else tagged
    rma,       ///< RMA writes only; a provider without them is backend_unavailable
    tagged,    ///< tagged messages even where RMA exists (tests, benchmarks, a slow RMA path)
  };
  /// The receiver's mode decides a stream: its first credit says which (window key 0 =
  /// tagged). A sender in `automatic` follows it; a sender whose mode or provider cannot
  /// (forced the other way, no RMA) fails its first send with backend_unavailable and tells
  /// the receiver, whose recv() reports the same.
  fabric_payload_mode fabric_payload = fabric_payload_mode::automatic;
};

/// Monotonic counters of one endpoint (relaxed atomics: exact totals, no ordering promises).
struct counters {
  std::atomic<std::uint64_t> segments_sent{0};
  std::atomic<std::uint64_t> bytes_sent{0}; ///< payload bytes
  std::atomic<std::uint64_t> segments_received{0};
  std::atomic<std::uint64_t> bytes_received{0};                  ///< payload bytes accepted
  std::array<std::atomic<std::uint64_t>, errc_count> rejected{}; ///< by reason
  /// Receiver: senders' streams it holds state for (fabric: a registered window each). A
  /// stream ends with its sender's goodbye, or (fabric+shm) once the sender's process is gone.
  std::atomic<std::uint64_t> streams_open{0};

  std::uint64_t rejected_for(errc e) const {
    return rejected[static_cast<std::size_t>(e)].load(std::memory_order_relaxed);
  }
};

/// The receiving end: bound to an address, accepts any number of senders.
class receiver {
public:
  virtual ~receiver() = default;

  /// The concrete address senders connect to (ephemeral port resolved, fabric name appended).
  virtual std::string address() const = 0;

  /// The next accepted segment, or an error: timeout when nothing valid arrived in `timeout`;
  /// corrupt / truncated / duplicate / out_of_order / oversized / malformed for a rejected one
  /// (dropped; call recv() again). The payload buffer holds the sender's credit until released.
  virtual result<segment> recv(milliseconds timeout) = 0;

  virtual const counters& stats() const = 0;
};

// -- fault injection (tests, chaos) -----------------------------------------------------------

/// Faults a sender applies to its next segment(s), after computing the checksum: the
/// receiver must catch each one. Set through sender::faults(); each flag is consumed once.
struct fault_plan {
  bool corrupt_next = false;       ///< flip one payload byte
  bool truncate_next = false;      ///< send fewer payload bytes than the header says
  bool duplicate_next = false;     ///< send the segment twice (same sequence)
  bool skip_sequence_next = false; ///< leave a gap in the stream sequence
};

/// The sending end: connected to one receiver.
class sender {
public:
  virtual ~sender() = default;

  /// Sends one segment; takes the payload (zero-copy where the backend allows). Fills
  /// header.checksum_xxh3 when it is 0 (or always_checksum), and header.payload_bytes.
  /// Waits for credit up to `timeout` (then errc::timeout; the segment is not sent).
  /// oversized when the payload exceeds segment_bytes_max or the receiver's window.
  /// Returns once the payload is handed to the backend (inproc: queued; zmq: given to libzmq,
  /// may still be in flight); fabric: once the RMA write (or tagged send) and its envelope are
  /// posted (up to 64 in flight within the window; shm: the envelope once the write has
  /// completed, which its fast path does inside the call); the sender holds the payload until
  /// the operation completes, and a per-sender progress thread drives completions (and shm's
  /// envelopes) while the caller is idle (some providers need the initiator's progress to
  /// finish a transfer).
  virtual result<void> send(segment seg, milliseconds timeout) = 0;

  /// Waits until every segment sent so far has left this process for good, so that the
  /// process may exit at once. fabric: the write or send and its envelope done, and, over
  /// every provider but shm (whose completion means the bytes are placed), the receiver's
  /// receipt for each segment, which it sends from recv() once it has taken the segment (a
  /// receiver that does not call recv() leaves flush() to time out); zmq: written to the
  /// socket; inproc: queued. Errors as for send().
  virtual result<void> flush(milliseconds timeout) = 0;

  /// Payload bytes sent and not yet released by the receiver (<= the receiver's window).
  virtual std::size_t in_flight_bytes() const = 0;

  virtual const counters& stats() const = 0;

  /// Faults to apply to the next segment(s) (tests and chaos; every backend honours them).
  fault_plan& faults() { return faults_; }

protected:
  fault_plan faults_;
};

/// Binds a receiver at `address` (see address.hpp). backend_unavailable names the provider when
/// the hardware is missing (fabric+verbs / fabric+efa here), bad_address when it cannot bind.
result<std::unique_ptr<receiver>> listen(std::string_view address, const options& opts = {});

/// Connects a sender to a receiver's concrete address. Returns without waiting for the
/// receiver (which answers the hello from its recv()); the receiver's first credit, carrying
/// its window, is awaited by the first send() within that send's timeout, so a wrong or dead
/// address surfaces there as errc::timeout. bad_address when the address cannot be used at all.
result<std::unique_ptr<sender>> connect(std::string_view address, const options& opts = {});

} // namespace duet::transport
