#pragma once

// The sending and receiving ends of KV movement as the actors see them.
//
// Sending (a prefill shard): `kv_sender_set` queues the shard's segments (bounded) for a worker
// thread that keeps one transport sender per decode lane address, connected on first use, and
// applies the fault injector's verdict for each segment (drop, delay, corrupt). With no address
// (transport "actor") the segment travels as a CAF message to the lane, checksummed the same way,
// so every path is verified on arrival.
//
// Receiving (a decode node): `kv_pump` owns the lane's transport receiver and a thread that
// waits in recv() (blocking with a timeout, never spinning) and forwards each accepted segment
// to whichever lane actor currently serves the node (it survives lane restarts).
//
// Both threads run under SCHED_BATCH (kv_link.cpp): they take an idle core at once and keep
// their share of a busy one, but do not preempt the engine's threads when a segment wakes them.

#include "actors/fabric_context.hpp"
#include "actors/fabric_messages.hpp"
#include "transport/transport.hpp"

#include <caf/actor.hpp>
#include <caf/error.hpp>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace duet::actors {

class kv_sender_set {
public:
  /// Segments queued and not yet sent, at most (and bytes, except that a lone segment larger
  /// than that is still taken when the queue is empty).
  static constexpr std::size_t queue_segments_max = 64;
  static constexpr std::size_t queue_bytes_max = std::size_t{64} << 20;

  explicit kv_sender_set(std::shared_ptr<fabric_context> ctx);
  /// Stops the worker; segments still queued are dropped (the shard is going away: their
  /// requests re-run their prefill elsewhere, or were released).
  ~kv_sender_set();
  kv_sender_set(const kv_sender_set&) = delete;
  kv_sender_set& operator=(const kv_sender_set&) = delete;

  /// Queues one segment for `route`'s lane and returns: the worker thread sends the queue in
  /// order, so the shard computes its next layer while this one crosses the transport (the
  /// first token can reach the lane before the last KV: the lane starts decoding once its KV
  /// is complete). Fails (transport_failure) only when the queue stays full for the send
  /// timeout. A failed send reaches route.request_actor as work_failed from the worker, once per
  /// (request, epoch); that epoch's later segments are skipped.
  caf::error send(const prefill_route& route, transport::segment seg);

private:
  /// What the worker needs of a segment's route (not the whole route: its pipeline and
  /// sampling would be copied for every segment).
  struct destination {
    std::uint64_t request = 0;
    std::uint32_t epoch = 0;
    caf::actor request_actor; ///< told when the send fails
    caf::actor lane;          ///< transport "actor": the segment goes to it as a CAF message
    std::string kv_address;   ///< else the lane's transport address
  };
  struct queued {
    destination to;
    transport::segment seg;
  };

  void run();
  /// Sends one segment now (fault verdict, connect on first use, transport send).
  caf::error send_now(const destination& to, transport::segment seg);

  std::shared_ptr<fabric_context> ctx_;
  std::map<std::string, std::unique_ptr<transport::sender>> senders_; ///< worker thread only
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<queued> queue_;
  std::size_t queued_bytes_ = 0;
  bool stop_ = false;
  std::thread worker_;
};

class kv_pump {
public:
  /// Binds a receiver at `listen_address` ("inproc://lane-0", "zmq+tcp://127.0.0.1:0", ...).
  /// `lane` is asked for the current lane actor for every segment.
  static caf::expected<std::unique_ptr<kv_pump>> start(std::shared_ptr<fabric_context> ctx,
                                                       const std::string& listen_address,
                                                       std::function<caf::actor()> lane);
  ~kv_pump();

  /// Stops forwarding (joins the thread) but keeps the receiver bound, so senders that still
  /// exist can be closed before it (libfabric wants its peers torn down first).
  void stop();

  /// The concrete address senders connect to.
  const std::string& address() const { return address_; }

private:
  kv_pump() = default;
  void run();

  std::shared_ptr<fabric_context> ctx_;
  std::unique_ptr<transport::receiver> receiver_;
  std::function<caf::actor()> lane_;
  std::string address_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

/// Checks a segment that arrived as a CAF message (transport "actor"): header sane, payload
/// size as announced, checksum equal. Empty string when valid.
std::string kv_segment_problem(const transport::segment& seg);

/// The transport options of a KV link for a model whose K and V are `kv_type` (f32 or f16): a
/// segment is one layer's K and V for at most the whole context, and a receiver's window
/// (registered once per sender) holds 8 of them, at least 4 MiB and at most the transport's
/// 128 MiB default unless one segment needs more. The default window alone took 128 MiB per
/// link: an embedded fabric+shm cluster of 2 prefill and 2 decode nodes peaked at 586 MB
/// resident for the 260K-parameter model. f16 K and V halve both (above the 4 MiB floor).
transport::options kv_link_options(const engine::model_config& model,
                                   engine::dtype kv_type = engine::dtype::f32);

} // namespace duet::actors
