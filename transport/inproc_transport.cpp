// inproc://name — sender and receiver in one process. The payload buffer itself moves from the
// sender's segment to the receiver's: zero copies. The receiver's window is enforced with a
// per-stream count of outstanding bytes that the received buffer's release decrements.

#include "transport/arrival_checker.hpp"
#include "transport/backends.hpp"
#include "transport/sender_common.hpp"

#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <unordered_map>

namespace duet::transport {

namespace {

struct inproc_item {
  std::uint64_t stream_id = 0;
  messages::kv_envelope envelope;
  buffer payload;
};

/// Shared by one receiver and its senders. Lifetime: the receiver owns it; senders and
/// in-flight buffers hold weak/shared references so either side may go first.
struct inproc_channel {
  explicit inproc_channel(const options& o) : opts(o) {}
  const options opts;
  std::mutex mu;
  std::condition_variable arrived;  ///< queue became non-empty or closed
  std::condition_variable released; ///< outstanding bytes went down or closed
  std::deque<inproc_item> queue;
  std::unordered_map<std::uint64_t, std::uint64_t> outstanding_bytes; ///< per stream
  std::uint64_t next_stream_id = 1;
  bool closed = false;
};

std::mutex registry_mu;
std::map<std::string, std::weak_ptr<inproc_channel>>& registry() {
  static std::map<std::string, std::weak_ptr<inproc_channel>> r;
  return r;
}

class inproc_receiver final : public receiver {
public:
  inproc_receiver(std::string name, std::shared_ptr<inproc_channel> ch)
      : name_(std::move(name)), channel_(std::move(ch)), checker_(channel_->opts) {}

  ~inproc_receiver() override {
    {
      std::lock_guard lock(registry_mu);
      auto it = registry().find(name_);
      if (it != registry().end() && it->second.lock() == channel_) registry().erase(it);
    }
    std::deque<inproc_item> dropped;
    {
      std::lock_guard lock(channel_->mu);
      channel_->closed = true;
      dropped.swap(channel_->queue);
    }
    channel_->released.notify_all();
  }

  std::string address() const override { return "inproc://" + name_; }

  result<segment> recv(milliseconds timeout) override {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    inproc_item item;
    {
      std::unique_lock lock(channel_->mu);
      if (!channel_->arrived.wait_until(lock, deadline, [&] { return !channel_->queue.empty(); }))
        return fail(errc::timeout, "inproc://" + name_ + ": nothing arrived within " +
                                       std::to_string(timeout.count()) + " ms");
      item = std::move(channel_->queue.front());
      channel_->queue.pop_front();
    }
    // Credit goes back when the receiver drops the bytes (now, if rejected).
    const std::size_t charged = item.payload.size();
    std::byte* data = item.payload.data();
    auto owner = item.payload.release_owner();
    std::weak_ptr<inproc_channel> weak = channel_;
    std::shared_ptr<void> credit_owner(
        data, [owner = std::move(owner), weak, stream = item.stream_id, charged](void*) mutable {
          owner.reset();
          if (auto ch = weak.lock()) {
            {
              std::lock_guard lock(ch->mu);
              ch->outstanding_bytes[stream] -= charged;
            }
            ch->released.notify_all();
          }
        });
    buffer payload = buffer::share(std::move(credit_owner), data, charged);
    auto ok = checker_.check(item.stream_id, item.envelope, payload.bytes(), stats_);
    if (!ok) return ok.err();
    return segment{item.envelope.header, std::move(payload)};
  }

  const counters& stats() const override { return stats_; }

private:
  std::string name_;
  std::shared_ptr<inproc_channel> channel_;
  arrival_checker checker_;
  counters stats_;
};

class inproc_sender final : public sender {
public:
  inproc_sender(std::string name, std::shared_ptr<inproc_channel> ch, std::uint64_t stream_id)
      : name_(std::move(name)), channel_(std::move(ch)), stream_id_(stream_id) {}

  result<void> send(segment seg, milliseconds timeout) override {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    const auto& opts = channel_->opts;
    if (auto ok = prepare_segment(seg, opts, opts.window_bytes); !ok) return ok;
    auto f = apply_faults(faults_, seg);
    if (f.skip_sequence) ++sequence_;
    const int copies = f.duplicate ? 2 : 1;
    const std::size_t n = seg.payload.size();
    std::unique_lock lock(channel_->mu);
    auto& outstanding = channel_->outstanding_bytes[stream_id_];
    if (!channel_->released.wait_until(lock, deadline, [&] {
          return channel_->closed || outstanding + n * copies <= opts.window_bytes;
        }))
      return fail(errc::timeout, "inproc://" + name_ + ": no credit for " + std::to_string(n) +
                                     " bytes within " + std::to_string(timeout.count()) +
                                     " ms (receiver holds " + std::to_string(outstanding) + ")");
    if (channel_->closed) return fail(errc::peer_dead, "inproc://" + name_ + ": receiver closed");
    messages::kv_envelope e;
    e.header = seg.header;
    e.sequence = sequence_++;
    std::byte* data = seg.payload.data();
    auto owner = seg.payload.release_owner();
    for (int i = 0; i < copies; ++i) {
      channel_->queue.push_back(inproc_item{stream_id_, e, buffer::share(owner, data, n)});
      outstanding += n;
    }
    lock.unlock();
    channel_->arrived.notify_one();
    stats_.segments_sent.fetch_add(1, std::memory_order_relaxed);
    stats_.bytes_sent.fetch_add(n, std::memory_order_relaxed);
    return {};
  }

  result<void> flush(milliseconds) override { return {}; }

  std::size_t in_flight_bytes() const override {
    std::lock_guard lock(channel_->mu);
    auto it = channel_->outstanding_bytes.find(stream_id_);
    return it == channel_->outstanding_bytes.end() ? 0 : it->second;
  }

  const counters& stats() const override { return stats_; }

private:
  std::string name_;
  std::shared_ptr<inproc_channel> channel_;
  std::uint64_t stream_id_;
  std::uint64_t sequence_ = 0;
  counters stats_;
};

} // namespace

result<std::unique_ptr<receiver>> inproc_listen(const address& at, const options& opts) {
  std::lock_guard lock(registry_mu);
  auto& slot = registry()[at.location];
  if (!slot.expired())
    return fail(errc::bad_address, "inproc://" + at.location + " is already bound");
  auto ch = std::make_shared<inproc_channel>(opts);
  slot = ch;
  return std::unique_ptr<receiver>(new inproc_receiver(at.location, std::move(ch)));
}

result<std::unique_ptr<sender>> inproc_connect(const address& to, const options&) {
  std::shared_ptr<inproc_channel> ch;
  {
    std::lock_guard lock(registry_mu);
    auto it = registry().find(to.location);
    if (it != registry().end()) ch = it->second.lock();
  }
  if (!ch) return fail(errc::bad_address, "nothing listens at inproc://" + to.location);
  std::uint64_t id;
  {
    std::lock_guard lock(ch->mu);
    id = ch->next_stream_id++;
    ch->outstanding_bytes[id] = 0;
  }
  return std::unique_ptr<sender>(new inproc_sender(to.location, std::move(ch), id));
}

} // namespace duet::transport
