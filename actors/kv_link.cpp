#include "actors/kv_link.hpp"

#include <caf/send.hpp>

#include <fmt/core.h>

#include <chrono>

#include <pthread.h>
#include <sched.h>

namespace duet::actors {

namespace {

using clock_type = std::chrono::steady_clock;

/// How long a shard waits for the lane's credit before it reports the transfer failed: long
/// enough for a busy lane to drain a window, short enough that a dead lane is noticed.
constexpr std::chrono::milliseconds send_timeout{5000};

/// The pump wakes this often to notice shutdown.
constexpr std::chrono::milliseconds recv_poll{100};

/// Puts the calling thread (a shard's KV sender, a lane's KV pump) under SCHED_BATCH: it keeps
/// its fair share of the CPU and runs at once on an idle core, but when it wakes it does not
/// preempt a running thread (the kernel preempts batch threads only at the tick). The transfer
/// is not on the first token's path (that token comes from the prefill side's own logits);
/// the prefill compute is. With the transfer threads preempting it, a prefill shard's layers
/// took 1.15-1.25 ms instead of 0.85-1.0 ms while KV streamed (stories15M f32, 32-token chunks,
/// zmq+tcp, one compiler busy on the other core). Best effort: a failure leaves the default.
void run_as_batch_thread() {
  sched_param param{};
  param.sched_priority = 0;
  (void)pthread_setschedparam(pthread_self(), SCHED_BATCH, &param);
}

} // namespace

kv_sender_set::kv_sender_set(std::shared_ptr<fabric_context> ctx)
    : ctx_(std::move(ctx)), worker_([this] { run(); }) {}

kv_sender_set::~kv_sender_set() {
  {
    std::lock_guard guard{mutex_};
    stop_ = true;
  }
  changed_.notify_all();
  worker_.join();
}

caf::error kv_sender_set::send(const prefill_route& route, transport::segment seg) {
  const auto bytes = seg.payload.size();
  std::unique_lock lock{mutex_};
  bool room = changed_.wait_for(lock, send_timeout, [&] {
    return queue_.empty() ||
           (queue_.size() < queue_segments_max && queued_bytes_ + bytes <= queue_bytes_max);
  });
  if (!room)
    return make_error(fabric_errc::transport_failure,
                      fmt::format("KV send queue to lane at {} still full after {} ms ({} "
                                  "segments, {} bytes)",
                                  route.kv_address.empty() ? "(actor)" : route.kv_address,
                                  send_timeout.count(), queue_.size(), queued_bytes_));
  queue_.push_back({{route.request, route.epoch, route.request_actor, route.lane, route.kv_address},
                    std::move(seg)});
  queued_bytes_ += bytes;
  lock.unlock();
  changed_.notify_all();
  return caf::none;
}

void kv_sender_set::run() {
  run_as_batch_thread();
  std::pair<std::uint64_t, std::uint32_t> failed{0, 0}; // (request, epoch) whose send failed
  bool any_failed = false;
  std::unique_lock lock{mutex_};
  while (true) {
    changed_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (stop_) break;
    auto item = std::move(queue_.front());
    queue_.pop_front();
    const auto bytes = item.seg.payload.size();
    lock.unlock();
    const std::pair<std::uint64_t, std::uint32_t> key{item.to.request, item.to.epoch};
    if (!(any_failed && key == failed)) {
      if (auto err = send_now(item.to, std::move(item.seg))) {
        failed = key;
        any_failed = true;
        caf::anon_send(item.to.request_actor,
                       work_failed{item.to.request, item.to.epoch, std::move(err)});
      }
    }
    lock.lock();
    queued_bytes_ -= bytes; // counted until sent, so the bound covers the one in flight too
    changed_.notify_all();
  }
  queue_.clear();
  queued_bytes_ = 0;
  lock.unlock();
  senders_.clear(); // closed on this thread, before the shard's context goes
}

caf::error kv_sender_set::send_now(const destination& route, transport::segment seg) {
  auto verdict = ctx_->faults.next_segment();
  if (verdict.delay_ms > 0)
    std::this_thread::sleep_for(std::chrono::milliseconds(verdict.delay_ms));
  if (verdict.drop) return caf::none; // lost on the wire: the lane's KV timeout notices
  auto bytes = seg.payload.size();
  auto start = clock_type::now();
  if (route.kv_address.empty()) {
    seg.header.payload_bytes = bytes;
    seg.header.checksum_xxh3 = messages::checksum_xxh3(seg.payload.bytes());
    if (verdict.corrupt && bytes > 0) seg.payload.mutable_bytes()[bytes / 2] ^= std::byte{0x5a};
    caf::anon_send(route.lane, kv_arrived{std::make_shared<transport::segment>(std::move(seg))});
  } else {
    auto& tx = senders_[route.kv_address];
    if (!tx) {
      auto connected = transport::connect(
          route.kv_address, kv_link_options(ctx_->model.weights->config, ctx_->kv_type()));
      if (!connected) {
        senders_.erase(route.kv_address);
        return make_error(fabric_errc::transport_failure,
                          fmt::format("connect to lane at {}: {}", route.kv_address,
                                      connected.err().to_string()));
      }
      tx = std::move(connected.value());
    }
    if (verdict.corrupt) tx->faults().corrupt_next = true;
    auto sent = tx->send(std::move(seg), send_timeout);
    if (!sent) {
      // A broken connection is not reused: the next segment reconnects (the lane may be new).
      senders_.erase(route.kv_address);
      return make_error(
          fabric_errc::transport_failure,
          fmt::format("send to lane at {}: {}", route.kv_address, sent.err().to_string()));
    }
  }
  auto seconds = std::chrono::duration<double>(clock_type::now() - start).count();
  ctx_->counters.kv_segments_sent.fetch_add(1, std::memory_order_relaxed);
  ctx_->counters.kv_bytes_sent.fetch_add(bytes, std::memory_order_relaxed);
  ctx_->counters.kv_send_ns.fetch_add(static_cast<std::uint64_t>(seconds * 1e9),
                                      std::memory_order_relaxed);
  observe_kv_transfer(ctx_->metrics, seconds, bytes);
  ctx_->send_log.record(seconds, bytes);
  return caf::none;
}

caf::expected<std::unique_ptr<kv_pump>> kv_pump::start(std::shared_ptr<fabric_context> ctx,
                                                       const std::string& listen_address,
                                                       std::function<caf::actor()> lane) {
  auto rx = transport::listen(listen_address,
                              kv_link_options(ctx->model.weights->config, ctx->kv_type()));
  if (!rx)
    return make_error(fabric_errc::transport_failure,
                      fmt::format("listen on {}: {}", listen_address, rx.err().to_string()));
  std::unique_ptr<kv_pump> pump{new kv_pump};
  pump->ctx_ = std::move(ctx);
  pump->receiver_ = std::move(rx.value());
  pump->address_ = pump->receiver_->address();
  pump->lane_ = std::move(lane);
  pump->thread_ = std::thread([p = pump.get()] { p->run(); });
  return pump;
}

kv_pump::~kv_pump() {
  stop();
}

void kv_pump::stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

void kv_pump::run() {
  run_as_batch_thread();
  while (!stop_.load()) {
    auto got = receiver_->recv(recv_poll);
    if (got) {
      auto lane = lane_();
      if (lane)
        caf::anon_send(lane, kv_arrived{std::make_shared<transport::segment>(std::move(*got))});
      continue;
    }
    auto code = got.code();
    if (code == transport::errc::timeout) continue;
    if (code == transport::errc::closed) break;
    // Rejected on arrival (corrupt, truncated, duplicate, ...): dropped and counted; the lane
    // notices the missing range by its KV timeout and the request re-runs its prefill.
    ctx_->counters.kv_segments_rejected.fetch_add(1, std::memory_order_relaxed);
  }
}

transport::options kv_link_options(const engine::model_config& model, engine::dtype kv_type) {
  transport::options o;
  // The largest segment a prefill can send: a whole context of one layer, K and V.
  const std::size_t segment = static_cast<std::size_t>(model.seq_len) * 2 *
                              engine::row_bytes(kv_type, static_cast<std::size_t>(model.kv_dim()));
  o.segment_bytes_max = std::max<std::size_t>(segment, std::size_t{64} << 10);
  o.window_bytes =
      std::max(o.segment_bytes_max,
               std::clamp<std::size_t>(8 * segment, std::size_t{4} << 20, std::size_t{128} << 20));
  return o;
}

std::string kv_segment_problem(const transport::segment& seg) {
  if (seg.header.payload_bytes != seg.payload.size())
    return fmt::format("payload of {} bytes, header says {}", seg.payload.size(),
                       seg.header.payload_bytes);
  if (auto problem = messages::kv_header_problem(seg.header); !problem.empty()) return problem;
  if (messages::checksum_xxh3(seg.payload.bytes()) != seg.header.checksum_xxh3)
    return "checksum mismatch";
  return {};
}

} // namespace duet::actors
