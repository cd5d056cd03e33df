// zmq+tcp:// and zmq+ipc:// — a ROUTER socket on the receiver, a DEALER per sender.
//
// Frames of a stream (Cap'n Proto TransportFrame, flat):
//   sender -> receiver: [hello] once, then per segment [envelope (nextFrame)] [payload bytes]...
//   receiver -> sender: [credit] (first one carries window and segment_bytes_max)
// The payload goes as one or more frames of at most payload_frame_bytes (a receiver takes any
// number; their sizes add up to the payload).
// Copies of the payload: sender 0 (zmq::message_t(ptr, len, free_fn) hands our buffer to
// libzmq, frame by frame). Receiver: a payload under pool_copy_min_bytes in one frame keeps the
// libzmq frame as its storage (0 copies; 1 where the frame sits misaligned in libzmq's batch
// buffer); a larger one is copied frame by frame into a buffer of a receive_pool and hashed
// while the frame is in cache, and each libzmq frame is freed at once. The kernel copies
// (socket write, socket read) are the transport's.
//
// Why a copy beats holding libzmq's frames for large payloads: libzmq mallocs every large frame
// it receives, and a receiver that holds frames while the consumer works on them makes the I/O
// thread allocate fresh memory for the next ones, which glibc maps and trims again (a page
// fault costs ~13 us on this VM). A frame freed right after its copy is the memory the next
// frame gets, still mapped and in cache; the pool's buffers stay mapped too. Frames of at most
// 1 MiB keep libzmq's allocations at one size for every segment size. Measured (duet bench
// transport --backends zmq+tcp, this 2-core VM, old and new binaries alternated): see
// docs/messages.md, Throughput.
#include "transport/arrival_checker.hpp"
#include "transport/backends.hpp"
#include "transport/receive_pool.hpp"
#include "transport/sender_common.hpp"

#include <zmq.hpp>

#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <thread>

namespace duet::transport {

namespace {

// A poll slice while received buffers are outstanding and a sender may be short of credit, so
// credit released on another thread goes back to it within ~1 ms even while recv() waits.
constexpr long credit_poll_slice_ms = 1;
// How long a closing socket may still push queued frames (after flush() there are none).
constexpr int linger_ms = 200;
// The largest payload frame a sender makes (a larger payload goes as several).
constexpr std::size_t payload_frame_bytes = std::size_t{1} << 20;
// From this size on (or when it came in several frames) a payload is copied into a pooled
// buffer instead of holding libzmq's frame. Below it, holding measured as fast as raw ZeroMQ.
constexpr std::size_t pool_copy_min_bytes = std::size_t{256} << 10;

/// One ZeroMQ context (one I/O thread) for every duet endpoint of the process, as ZeroMQ
/// recommends. A context per endpoint put two I/O threads next to the two callers on 2 cores:
/// measured here (1 MiB messages over tcp in one process), 1 context 3.6-4.4 GB/s, 2 contexts
/// 0.6-1.3 GB/s. The context lives while any endpoint does (then it is terminated, so nothing
/// is left to tear down at exit) and is made again on next use.
std::shared_ptr<zmq::context_t> process_context() {
  static std::mutex mutex;
  static std::weak_ptr<zmq::context_t> shared;
  std::lock_guard guard{mutex};
  auto ctx = shared.lock();
  if (!ctx) {
    ctx = std::make_shared<zmq::context_t>(1);
    // The I/O thread moves bytes beside compute threads (a prefill shard streams KV while it
    // computes the next layer): under SCHED_BATCH it keeps its share of the CPU and takes an
    // idle core at once, but does not preempt a running thread when a frame wakes it. Set
    // before the first socket starts the thread.
    ctx->set(zmq::ctxopt::thread_sched_policy, SCHED_BATCH);
    shared = ctx;
  }
  return ctx;
}

std::span<const std::byte> view(const zmq::message_t& m) {
  return {static_cast<const std::byte*>(m.data()), m.size()};
}

void send_frame(zmq::socket_t& s, const messages::stream_frame& f, zmq::send_flags flags) {
  auto bytes = messages::encode_frame(f);
  s.send(zmq::message_t(bytes.data(), bytes.size()), flags);
}

/// The zmq endpoint for a duet address ("127.0.0.1:0" binds an ephemeral port).
std::string zmq_endpoint(const address& a) {
  if (a.flavor == "ipc") return "ipc://" + a.location;
  std::string loc = a.location;
  auto colon = loc.rfind(':');
  if (loc.substr(colon + 1) == "0") loc = loc.substr(0, colon) + ":*";
  return "tcp://" + loc;
}

/// One sender as the receiver sees it. Shared with released buffers (they may outlive the
/// receiver), hence the atomics.
struct zmq_stream {
  std::string identity;
  std::uint64_t stream_id = 0;
  std::atomic<std::uint64_t> released_bytes{0}; ///< released since the last credit frame
  /// Payload bytes received from this sender and not yet granted back (receiver thread only):
  /// the sender has at most window - unreturned_bytes of credit left.
  std::uint64_t unreturned_bytes = 0;
};

/// The file of a bound ipc:// socket, which libzmq 4.3 leaves behind when the socket closes (it
/// removes only the files of wildcard addresses). Removed only while it is still the file this
/// receiver made: libzmq's bind replaces an existing file, so a later receiver may have taken
/// the path over, and its file must stay.
class socket_file {
public:
  socket_file() = default;
  static socket_file of(const std::string& path) {
    socket_file f;
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode))
      f.path_ = path, f.dev_ = st.st_dev, f.ino_ = st.st_ino;
    return f;
  }
  void remove() {
    struct stat st {};
    if (!path_.empty() && ::stat(path_.c_str(), &st) == 0 && st.st_dev == dev_ && st.st_ino == ino_)
      (void)::unlink(path_.c_str());
    path_.clear();
  }

private:
  std::string path_;
  dev_t dev_ = 0;
  ino_t ino_ = 0;
};

class zmq_receiver final : public receiver {
public:
  zmq_receiver(const options& opts) : opts_(opts), checker_(opts_) {}

  result<void> bind(const transport::address& at) {
    try {
      sock_.set(zmq::sockopt::linger, linger_ms);
      // libzmq drops a peer that sends a larger frame: memory stays bounded even against a
      // hostile sender (the envelope is far below the 64 KiB slack).
      sock_.set(zmq::sockopt::maxmsgsize,
                static_cast<std::int64_t>(opts_.segment_bytes_max + (std::size_t{64} << 10)));
      sock_.bind(zmq_endpoint(at));
      std::string last = sock_.get(zmq::sockopt::last_endpoint);
      auto sep = last.find("://");
      address_ = "zmq+" + last.substr(0, sep) + "://" + last.substr(sep + 3);
    } catch (const zmq::error_t& e) {
      return fail(errc::bad_address, "cannot bind " + at.to_string() + ": " + e.what());
    }
    if (at.flavor == "ipc") ipc_file_ = socket_file::of(at.location);
    return {};
  }

  ~zmq_receiver() override {
    sock_.close();
    ipc_file_.remove();
  }

  std::string address() const override { return address_; }

  result<segment> recv(milliseconds timeout) override {
    try {
      return recv_impl(timeout);
    } catch (const zmq::error_t& e) {
      return fail(errc::internal, address_ + ": zmq: " + e.what());
    }
  }

  const counters& stats() const override { return stats_; }

private:
  /// Whether `st`'s sender may lack credit for its next segment once nothing is in flight.
  bool may_lack_credit(const zmq_stream& st) const {
    return st.unreturned_bytes + opts_.segment_bytes_max > opts_.window_bytes;
  }

  /// Returns released bytes to their senders: batched, a quarter window at a time, and when
  /// about to wait (`idle`) also everything to a sender that may lack credit. One credit frame
  /// per segment doubled the messages and wake-ups per segment; one per idle gap still cost a
  /// credit frame per KV segment (a prefill shard's segments arrive ~1 ms apart), each a wake-up
  /// of the I/O thread on both ends, while a sender with most of its window left needs none.
  void send_credits(bool idle) {
    for (auto& [id, st] : streams_) {
      std::uint64_t n = st->released_bytes.load();
      if (n == 0 || (n < opts_.window_bytes / 4 && !(idle && may_lack_credit(*st)))) continue;
      n = st->released_bytes.exchange(0);
      st->unreturned_bytes -= std::min(st->unreturned_bytes, n);
      sock_.send(zmq::buffer(id), zmq::send_flags::sndmore);
      send_frame(sock_, messages::credit_grant{st->stream_id, n, 0, 0, 0, 0},
                 zmq::send_flags::dontwait);
    }
  }

  /// Whether some sender may lack credit while received buffers are still held elsewhere.
  bool credit_pending() const {
    if (outstanding_buffers_->load() == 0) return false;
    for (const auto& [id, st] : streams_)
      if (may_lack_credit(*st)) return true;
    return false;
  }

  result<segment> recv_impl(milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      send_credits(false);
      zmq::pollitem_t item{sock_.handle(), 0, ZMQ_POLLIN, 0};
      zmq::poll(&item, 1, std::chrono::milliseconds(0));
      if ((item.revents & ZMQ_POLLIN) == 0) { // about to wait: return credit a sender may need
        send_credits(true);
        long wait = remaining_ms(deadline);
        if (credit_pending()) wait = std::min(wait, credit_poll_slice_ms);
        zmq::poll(&item, 1, std::chrono::milliseconds(wait));
      }
      if ((item.revents & ZMQ_POLLIN) == 0) {
        if (remaining_ms(deadline) == 0)
          return fail(errc::timeout, address_ + ": nothing arrived within " +
                                         std::to_string(timeout.count()) + " ms");
        continue;
      }
      std::vector<zmq::message_t> parts;
      do {
        parts.emplace_back();
        (void)sock_.recv(parts.back());
      } while (parts.back().more());
      auto out = handle(parts);
      if (out) return std::move(out).value();
      if (out.code() != errc::ok) return out.err(); // ok-code "error" = control frame handled
    }
  }

  /// A segment, an error for the caller, or error{ok} when a control frame was consumed.
  result<segment> handle(std::vector<zmq::message_t>& parts) {
    if (parts.size() < 2)
      return arrival_checker::reject(stats_, errc::malformed, address_ + ": empty message");
    std::string identity(static_cast<const char*>(parts[0].data()), parts[0].size());
    auto frame = messages::decode_frame(view(parts[1]), opts_.segment_bytes_max);
    if (!frame) {
      // A payload frame behind an unreadable envelope still cost its sender credit: give it back.
      if (auto known = streams_.find(identity); known != streams_.end() && parts.size() == 3) {
        known->second->unreturned_bytes += parts[2].size();
        known->second->released_bytes.fetch_add(parts[2].size());
      }
      errc code = frame.why().kind == messages::problem_kind::truncated   ? errc::truncated
                  : frame.why().kind == messages::problem_kind::oversized ? errc::oversized
                                                                          : errc::malformed;
      return arrival_checker::reject(stats_, code, address_ + ": " + frame.why().context);
    }
    if (auto* hello = std::get_if<messages::stream_hello>(&*frame)) {
      auto st = std::make_shared<zmq_stream>();
      st->identity = identity;
      st->stream_id = hello->stream_id;
      streams_[identity] = st;
      stats_.streams_open.store(streams_.size(), std::memory_order_relaxed);
      checker_.forget_stream(hello->stream_id);
      sock_.send(zmq::buffer(identity), zmq::send_flags::sndmore);
      send_frame(sock_,
                 messages::credit_grant{hello->stream_id, opts_.window_bytes, opts_.window_bytes,
                                        opts_.segment_bytes_max, 0, 0},
                 zmq::send_flags::dontwait);
      return error{errc::ok, {}};
    }
    if (std::holds_alternative<messages::stream_bye>(*frame)) {
      streams_.erase(identity);
      stats_.streams_open.store(streams_.size(), std::memory_order_relaxed);
      return error{errc::ok, {}};
    }
    auto* env = std::get_if<messages::kv_envelope>(&*frame);
    if (env == nullptr)
      return arrival_checker::reject(stats_, errc::malformed,
                                     address_ + ": unexpected frame kind from a sender");
    auto it = streams_.find(identity);
    if (it == streams_.end())
      return arrival_checker::reject(stats_, errc::malformed,
                                     address_ + ": segment from a peer that sent no hello");
    if (env->placement != messages::payload_placement::next_frame)
      return arrival_checker::reject(
          stats_, errc::malformed, address_ + ": zmq segments carry the payload as the next frame");
    if (parts.size() < 3)
      return arrival_checker::reject(stats_, errc::truncated,
                                     address_ + ": segment envelope without payload frames");
    std::size_t n = 0;
    for (std::size_t i = 2; i < parts.size(); ++i) n += parts[i].size();
    auto& st = *it->second;
    if (n > opts_.segment_bytes_max) { // not copied anywhere: its credit goes back at once
      st.unreturned_bytes += n;
      st.released_bytes.fetch_add(n);
      return checker_.reject_arrival(st.stream_id, *env, errc::oversized,
                                     std::to_string(n) +
                                         " payload bytes exceed segment_bytes_max " +
                                         std::to_string(opts_.segment_bytes_max),
                                     stats_);
    }
    std::shared_ptr<void> storage;
    std::byte* data = nullptr;
    std::optional<std::uint64_t> xxh3;
    auto& first = parts[2];
    if (parts.size() == 3 && n < pool_copy_min_bytes &&
        reinterpret_cast<std::uintptr_t>(first.data()) % 8 == 0) {
      // Keep the zmq frame as the payload's storage (no copy).
      auto held = std::make_shared<zmq::message_t>(std::move(first));
      data = static_cast<std::byte*>(held->data());
      storage = std::move(held);
    } else if (parts.size() == 3 && n < pool_copy_min_bytes) {
      auto copy = buffer::copy_of(view(first));
      data = copy.data();
      storage = copy.release_owner();
    } else {
      auto lease = pool_->take(n);
      data = lease.data;
      storage = std::move(lease.owner);
      hash_.reset();
      std::size_t at = 0;
      for (std::size_t i = 2; i < parts.size(); ++i) {
        const std::size_t size = parts[i].size();
        if (size != 0) std::memcpy(data + at, parts[i].data(), size);
        hash_.update({data + at, size});
        parts[i].rebuild(); // the frame's memory back to libzmq's allocator now
        at += size;
      }
      xxh3 = hash_.digest();
    }
    st.unreturned_bytes += n;
    outstanding_buffers_->fetch_add(1);
    std::shared_ptr<void> credit_owner(data,
                                       [storage = std::move(storage), st = it->second,
                                        outstanding = outstanding_buffers_, n](void*) mutable {
                                         storage.reset();
                                         st->released_bytes.fetch_add(n);
                                         outstanding->fetch_sub(1);
                                       });
    buffer payload = buffer::share(std::move(credit_owner), data, n);
    auto ok = checker_.check(st.stream_id, *env, payload.bytes(), stats_, xxh3);
    if (!ok) return ok.err();
    return segment{env->header, std::move(payload)};
  }

  options opts_;
  std::shared_ptr<zmq::context_t> ctx_ = process_context(); // outlives sock_
  zmq::socket_t sock_{*ctx_, zmq::socket_type::router};
  socket_file ipc_file_; // zmq+ipc: the socket file this receiver made
  std::string address_;
  arrival_checker checker_;
  counters stats_;
  std::map<std::string, std::shared_ptr<zmq_stream>> streams_;
  std::shared_ptr<std::atomic<std::int64_t>> outstanding_buffers_ =
      std::make_shared<std::atomic<std::int64_t>>(0);
  // Idle buffers up to one window: as many as the senders may fill before credit comes back.
  std::shared_ptr<receive_pool> pool_ = receive_pool::make(opts_.window_bytes);
  messages::checksum_xxh3_stream hash_;
};

/// What libzmq holds while it sends a zero-copy payload frame.
struct zmq_hold {
  std::shared_ptr<void> owner;
  std::shared_ptr<std::atomic<std::int64_t>> pending;
};

void zmq_release(void*, void* hint) {
  auto* h = static_cast<zmq_hold*>(hint);
  h->pending->fetch_sub(1);
  delete h;
}

class zmq_sender final : public sender {
public:
  explicit zmq_sender(const options& opts) : opts_(opts) {}

  ~zmq_sender() override {
    try {
      send_frame(sock_, messages::stream_bye{}, zmq::send_flags::dontwait);
    } catch (const zmq::error_t&) {
    }
    sock_.close();
  }

  result<void> open(const transport::address& to) {
    try {
      sock_.set(zmq::sockopt::linger, linger_ms);
      sock_.connect(zmq_endpoint(to));
      stream_id_ = std::random_device{}() | std::uint64_t{std::random_device{}()} << 32;
      send_frame(sock_, messages::stream_hello{messages::stream_protocol_version, stream_id_, {}},
                 zmq::send_flags::dontwait);
      name_ = to.to_string();
    } catch (const zmq::error_t& e) {
      return fail(errc::bad_address, "connect " + to.to_string() + ": " + e.what());
    }
    return {};
  }

  result<void> send(segment seg, milliseconds timeout) override {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    try {
      while (window_ == 0) // the receiver has not answered the hello yet
        if (auto ok = pump(deadline); !ok)
          return fail(ok.code(), name_ + ": the receiver did not answer within " +
                                     std::to_string(timeout.count()) + " ms (" + ok.err().context +
                                     ")");
    } catch (const zmq::error_t& e) {
      return fail(errc::internal, name_ + ": zmq: " + e.what());
    }
    options limits = opts_;
    limits.segment_bytes_max = std::min<std::size_t>(opts_.segment_bytes_max, receiver_max_);
    if (auto ok = prepare_segment(seg, limits, window_); !ok) return ok;
    auto f = apply_faults(faults_, seg);
    if (f.skip_sequence) ++sequence_;
    const int copies = f.duplicate ? 2 : 1;
    const std::size_t n = seg.payload.size();
    try {
      while (credit_ < n * copies) {
        if (auto ok = pump(deadline); !ok)
          return fail(ok.code(), name_ + ": no credit for " + std::to_string(n) + " bytes within " +
                                     std::to_string(timeout.count()) + " ms (" +
                                     std::to_string(window_ - credit_) + " bytes unreleased)");
      }
      messages::kv_envelope e;
      e.header = seg.header;
      e.placement = messages::payload_placement::next_frame;
      e.sequence = sequence_++;
      auto envelope = messages::encode_frame(e);
      std::byte* data = seg.payload.data();
      auto owner = seg.payload.release_owner();
      sock_.set(zmq::sockopt::sndtimeo, static_cast<int>(std::max(1L, remaining_ms(deadline))));
      for (int i = 0; i < copies; ++i) {
        if (!sock_.send(zmq::message_t(envelope.data(), envelope.size()), zmq::send_flags::sndmore))
          return fail(errc::timeout, name_ + ": socket would not take the segment in time");
        std::size_t at = 0;
        do { // at least one frame, even for an empty payload
          const std::size_t size = std::min(payload_frame_bytes, n - at);
          pending_->fetch_add(1);
          zmq::message_t frame(data + at, size, &zmq_release, new zmq_hold{owner, pending_});
          at += size;
          if (!sock_.send(std::move(frame),
                          at < n ? zmq::send_flags::sndmore : zmq::send_flags::none))
            return fail(errc::timeout, name_ + ": socket would not take the segment in time");
        } while (at < n);
        credit_ -= n;
      }
    } catch (const zmq::error_t& e) {
      return fail(errc::internal, name_ + ": zmq: " + e.what());
    }
    stats_.segments_sent.fetch_add(1, std::memory_order_relaxed);
    stats_.bytes_sent.fetch_add(n, std::memory_order_relaxed);
    return {};
  }

  result<void> flush(milliseconds timeout) override {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (pending_->load() > 0) {
      if (remaining_ms(deadline) == 0)
        return fail(errc::timeout, name_ + ": " + std::to_string(pending_->load()) +
                                       " payloads still queued in libzmq");
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    return {};
  }

  std::size_t in_flight_bytes() const override { return window_ - credit_; }
  const counters& stats() const override { return stats_; }

private:
  /// Waits for one incoming frame (credit) until the deadline.
  result<void> pump(std::chrono::steady_clock::time_point deadline) {
    zmq::pollitem_t item{sock_.handle(), 0, ZMQ_POLLIN, 0};
    zmq::poll(&item, 1, std::chrono::milliseconds(remaining_ms(deadline)));
    if ((item.revents & ZMQ_POLLIN) == 0) return fail(errc::timeout, "timed out");
    while (true) {
      zmq::message_t m;
      if (!sock_.recv(m, zmq::recv_flags::dontwait)) break;
      auto frame = messages::decode_frame(view(m), opts_.segment_bytes_max);
      if (!frame) return fail(errc::malformed, "bad frame from receiver: " + frame.why().context);
      if (auto* c = std::get_if<messages::credit_grant>(&*frame)) {
        if (c->window_bytes != 0) { // the first credit: the receiver's terms
          window_ = c->window_bytes;
          receiver_max_ = c->segment_bytes_max;
        }
        credit_ += c->grant_bytes;
      } else if (auto* err = std::get_if<messages::error_info>(&*frame)) {
        return fail(static_cast<errc>(err->code), "receiver: " + err->context);
      }
    }
    return {};
  }

  options opts_;
  std::shared_ptr<zmq::context_t> ctx_ = process_context(); // outlives sock_
  zmq::socket_t sock_{*ctx_, zmq::socket_type::dealer};
  std::string name_;
  std::uint64_t stream_id_ = 0;
  std::uint64_t sequence_ = 0;
  std::uint64_t window_ = 0;
  std::uint64_t credit_ = 0;
  std::uint64_t receiver_max_ = 0;
  std::shared_ptr<std::atomic<std::int64_t>> pending_ =
      std::make_shared<std::atomic<std::int64_t>>(0);
  counters stats_;
};

} // namespace

result<std::unique_ptr<receiver>> zmq_listen(const address& at, const options& opts) {
  auto r = std::make_unique<zmq_receiver>(opts);
  if (auto ok = r->bind(at); !ok) return ok.err();
  return std::unique_ptr<receiver>(std::move(r));
}

result<std::unique_ptr<sender>> zmq_connect(const address& to, const options& opts) {
  auto s = std::make_unique<zmq_sender>(opts);
  if (auto ok = s->open(to); !ok) return ok.err();
  return std::unique_ptr<sender>(std::move(s));
}

} // namespace duet::transport
