#include "bench/transport_bench.hpp"
#include "messages/kv_segment.hpp"

#include "messages/stream_frame.hpp"
#include "transport/transport.hpp"

#include <zmq.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <sys/mman.h>
#include <sys/uio.h>
#include <thread>
#include <unistd.h>
#include <utility>

namespace duet::bench {

namespace {

using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;

double seconds_since(clock_type::time_point t) {
  return std::chrono::duration<double>(clock_type::now() - t).count();
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(q * static_cast<double>(v.size())))];
}

int stream_count(const transport_bench_options& o, std::size_t bytes) {
  return static_cast<int>(std::clamp<std::size_t>((o.mib_per_point << 20) / bytes, 8, 4000));
}

int latency_count(const transport_bench_options& o, std::size_t bytes) {
  return static_cast<int>(std::clamp<std::size_t>((o.mib_per_point << 20) / 4 / bytes, 12,
                                                  static_cast<std::size_t>(o.latency_samples)));
}

/// f32, 1 head of 128: 1 KiB per token, so any multiple of 1 KiB has a valid shape.
messages::kv_segment_header header_for(std::size_t bytes, std::uint64_t request) {
  messages::kv_segment_header h;
  h.request_id = request;
  h.token_end = static_cast<std::uint32_t>(bytes / 1024);
  h.n_kv_heads = 1;
  h.head_size = 128;
  h.payload_bytes = bytes;
  return h;
}

/// `bytes` of a fixed pattern (every byte differs from its neighbours), the payload every
/// baseline and backend moves.
transport::buffer patterned(std::size_t bytes) {
  auto b = transport::buffer::allocate(bytes);
  for (std::size_t i = 0; i < bytes; ++i) b.data()[i] = static_cast<std::byte>(i * 131);
  return b;
}

/// The copy libfabric's shm makes for an RMA write: process_vm_writev into this process.
bool cma_write(pid_t self, const std::byte* src, std::byte* dst, std::size_t bytes) {
  iovec local{const_cast<std::byte*>(src), bytes}, remote{dst, bytes};
  return ::process_vm_writev(self, &local, 1, &remote, 1, 0) == static_cast<ssize_t>(bytes);
}

constexpr const char* cma_failed = "process_vm_writev failed (CMA not permitted here?)";

/// The receive window the benchmark gives a transport for `bytes` segments (room to pipeline).
std::size_t window_for(const transport_bench_options& o, std::size_t bytes) {
  if (o.window_segments > 0)
    return std::max<std::size_t>(o.window_segments * bytes, std::max<std::size_t>(bytes, 1 << 20));
  return std::max<std::size_t>(4 * bytes, 16 << 20);
}

/// Memory laid out as fabric's receive window is (2 MiB-aligned, transparent huge pages
/// advised, faulted in), for the ring baselines.
std::shared_ptr<std::byte> window_like(std::size_t bytes) {
  constexpr std::size_t huge = std::size_t{2} << 20;
  const std::size_t rounded = (bytes + huge - 1) / huge * huge;
  void* mem = std::aligned_alloc(huge, rounded);
  if (mem == nullptr) throw std::bad_alloc();
  (void)::madvise(mem, rounded, MADV_HUGEPAGE);
  std::memset(mem, 0, rounded);
  return {static_cast<std::byte*>(mem), [](std::byte* p) { std::free(p); }};
}

/// The copy a transport has to make, without any transport: the same bytes into successive
/// slots of a ring the size of the window the transport gets (the memcpy baseline copies into
/// one warm buffer), by memcpy or (`cma`) by process_vm_writev to this process, which is the
/// copy libfabric's shm makes for an RMA write. Latency: one copy.
transport_point bench_ring(const transport_bench_options& o, std::size_t bytes, bool cma) {
  transport_point p;
  p.name = cma ? "cma ring" : "memcpy ring";
  p.bytes = bytes;
  auto src = patterned(bytes);
  const std::size_t slots = window_for(o, bytes) / bytes;
  auto ring = window_like(slots * bytes);
  const pid_t self = getpid();
  const int n = stream_count(o, bytes);
  std::vector<double> lat;
  // One untimed pass over every slot first, as the transports get theirs (their first lone
  // segments are not timed): the first copy into each slot pays one-off costs (a first CMA
  // into a region was measured 20x slower than later ones).
  const int warm = static_cast<int>(slots);
  clock_type::time_point t0;
  for (int i = 0; i < warm + n; ++i) {
    if (i == warm) t0 = clock_type::now();
    auto t = clock_type::now();
    std::byte* dst = ring.get() + static_cast<std::size_t>(i) % slots * bytes;
    if (cma) {
      if (!cma_write(self, src.data(), dst, bytes)) {
        p.note = cma_failed;
        return p;
      }
    } else {
      std::memcpy(dst, src.data(), bytes);
    }
    if (i >= warm) lat.push_back(seconds_since(t) * 1e6);
  }
  p.gbps = static_cast<double>(bytes) * n / seconds_since(t0) / 1e9;
  p.p50_us = percentile(lat, 0.5);
  p.p99_us = percentile(lat, 0.99);
  p.iterations = n;
  return p;
}

/// fabric+shm's ceiling on two cores: the CMA copy of `cma ring` on this thread and, on a
/// second one, the verification every arrival gets (xxh3 of each slot once it is written, one
/// slot behind; the copier waits when it would overwrite a slot not yet hashed), with no
/// transport between them. Measured (a scratch program of the same loop, 1 MiB, 2000 copies,
/// the Xeon VM of 2026-11-30): 41-48% of memcpy with 16 slots, 46-47% with 8, 63-68% of the CMA
/// copy alone: the two cores share the memory the copy writes and the hash reads.
transport_point bench_cma_verified(const transport_bench_options& o, std::size_t bytes) {
  transport_point p;
  p.name = "cma ring +xxh3";
  p.bytes = bytes;
  auto src = patterned(bytes);
  const std::uint64_t expected = messages::checksum_xxh3(src.bytes());
  const std::size_t slots = window_for(o, bytes) / bytes;
  auto ring = window_like(slots * bytes);
  const pid_t self = getpid();
  const int warm = static_cast<int>(slots), total = warm + stream_count(o, bytes);
  std::atomic<int> written{0}, verified{0};
  std::atomic<bool> failed{false}, mismatch{false};
  std::thread verifier([&] {
    for (int i = 0; i < total && !failed.load(std::memory_order_relaxed); ++i) {
      while (written.load(std::memory_order_acquire) <= i &&
             !failed.load(std::memory_order_relaxed))
        std::this_thread::yield();
      if (failed.load(std::memory_order_relaxed)) break;
      const std::byte* slot = ring.get() + static_cast<std::size_t>(i) % slots * bytes;
      if (messages::checksum_xxh3({slot, bytes}) != expected) mismatch = true;
      verified.store(i + 1, std::memory_order_release);
    }
  });
  clock_type::time_point t0;
  for (int i = 0; i < total; ++i) {
    if (i == warm) t0 = clock_type::now();
    while (i - verified.load(std::memory_order_acquire) >= static_cast<int>(slots))
      std::this_thread::yield();
    if (!cma_write(self, src.data(), ring.get() + static_cast<std::size_t>(i) % slots * bytes,
                   bytes)) {
      failed = true;
      break;
    }
    written.store(i + 1, std::memory_order_release);
  }
  verifier.join();
  if (failed) {
    p.note = cma_failed;
    return p;
  }
  if (mismatch) {
    p.note = "checksum mismatch";
    return p;
  }
  const int n = total - warm;
  p.gbps = static_cast<double>(bytes) * n / seconds_since(t0) / 1e9;
  p.iterations = n;
  return p;
}

transport_point bench_memcpy(const transport_bench_options& o, std::size_t bytes) {
  transport_point p;
  p.name = "memcpy";
  p.bytes = bytes;
  auto src = transport::buffer::allocate(bytes), dst = transport::buffer::allocate(bytes);
  std::memset(src.data(), 1, bytes);
  std::memset(dst.data(), 2, bytes);
  const int n = stream_count(o, bytes);
  std::vector<double> lat;
  auto t0 = clock_type::now();
  for (int i = 0; i < n; ++i) {
    auto t = clock_type::now();
    std::memcpy(dst.data(), src.data(), bytes);
    lat.push_back(seconds_since(t) * 1e6);
  }
  p.gbps = static_cast<double>(bytes) * n / seconds_since(t0) / 1e9;
  p.p50_us = percentile(lat, 0.5);
  p.p99_us = percentile(lat, 0.99);
  p.iterations = n;
  return p;
}

/// Raw ZeroMQ: PAIR sockets, zero-copy sends of one reused buffer, no envelope; with `hash`
/// the receiver verifies each message's xxh3 (as every duet arrival is) before dropping it.
/// `frame_bytes` (0: one frame): the message goes as frames of that size, as zmq+tcp sends a
/// large payload, and the receiver hashes it frame by frame.
transport_point bench_raw_zmq(const transport_bench_options& o, std::size_t bytes,
                              const std::string& flavor, bool hash = false,
                              std::size_t frame_bytes = 0) {
  transport_point p;
  p.name = "raw zmq+" + flavor + (frame_bytes != 0 ? " framed" : "") + (hash ? " +xxh3" : "");
  p.bytes = bytes;
  // libzmq 4.3 leaves an ipc socket's file behind: removed after the sockets (declared first,
  // so destroyed last).
  struct remove_file {
    std::string path;
    ~remove_file() {
      if (!path.empty()) (void)::unlink(path.c_str());
    }
  } ipc_file{flavor == "tcp" ? "" : "/tmp/duet-bench-raw-" + std::to_string(getpid())};
  zmq::context_t ctx(1);
  zmq::socket_t rx(ctx, zmq::socket_type::pair), tx(ctx, zmq::socket_type::pair);
  std::string ep = flavor == "tcp" ? "tcp://127.0.0.1:*" : "ipc://" + ipc_file.path;
  rx.bind(ep);
  tx.connect(rx.get(zmq::sockopt::last_endpoint));
  auto payload = transport::buffer::allocate(bytes);
  std::memset(payload.data(), 3, bytes);
  const std::uint64_t checksum = messages::checksum_xxh3(payload.bytes());
  if (frame_bytes == 0) frame_bytes = bytes;
  std::atomic<bool> corrupt{false};
  messages::checksum_xxh3_stream stream;
  auto receive = [&] { // one message, all its frames
    zmq::message_t m;
    stream.reset();
    do {
      (void)rx.recv(m);
      if (hash) stream.update({static_cast<const std::byte*>(m.data()), m.size()});
    } while (m.more());
    if (hash && stream.digest() != checksum) corrupt = true;
  };
  auto send_one = [&] {
    for (std::size_t at = 0; at < bytes; at += frame_bytes) {
      const std::size_t size = std::min(frame_bytes, bytes - at);
      tx.send(zmq::message_t(
                  payload.data() + at, size, [](void*, void*) {}, nullptr),
              at + size < bytes ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
  };
  // Latency: one message at a time.
  std::vector<double> lat;
  for (int i = 0, n = latency_count(o, bytes); i < n; ++i) {
    auto t = clock_type::now();
    send_one();
    receive();
    lat.push_back(seconds_since(t) * 1e6);
  }
  const int n = stream_count(o, bytes);
  std::atomic<int> got{0};
  auto t0 = clock_type::now();
  std::thread receiving([&] {
    for (int i = 0; i < n; ++i) {
      receive();
      got.fetch_add(1);
    }
  });
  for (int i = 0; i < n; ++i) send_one();
  receiving.join();
  p.gbps = static_cast<double>(bytes) * n / seconds_since(t0) / 1e9;
  p.p50_us = percentile(lat, 0.5);
  p.p99_us = percentile(lat, 0.99);
  p.iterations = n;
  if (corrupt) p.note = "checksum mismatch";
  return p;
}

/// A backend name is an address scheme, for fabric optionally followed by "/<payload mode>"
/// (fabric+shm/tagged, fabric+tcp/rma): the bind address and the options that go with it.
std::pair<std::string, transport::options::fabric_payload_mode>
split_backend(const std::string& backend) {
  using mode = transport::options::fabric_payload_mode;
  auto slash = backend.find('/');
  if (slash == std::string::npos) return {backend, mode::automatic};
  const std::string scheme = backend.substr(0, slash), suffix = backend.substr(slash + 1);
  if (suffix == "tagged") return {scheme, mode::tagged};
  if (suffix == "rma") return {scheme, mode::rma};
  if (suffix == "automatic") return {scheme, mode::automatic};
  return {backend, mode::automatic}; // not a mode: listen() reports the bad address
}

std::string bind_address(const std::string& backend) {
  if (backend == "inproc") return "inproc://bench";
  if (backend == "zmq+tcp") return "zmq+tcp://127.0.0.1:0";
  if (backend == "zmq+ipc") return "zmq+ipc:///tmp/duet-bench-" + std::to_string(getpid());
  if (backend == "fabric+tcp") return "fabric+tcp://127.0.0.1:0";
  if (backend == "fabric+udp") return "fabric+udp://127.0.0.1:0";
  return backend + "://";
}

transport_point bench_backend(const transport_bench_options& o, std::size_t bytes,
                              const std::string& backend) {
  transport_point p;
  p.name = backend;
  p.bytes = bytes;
  const auto [scheme, payload_mode] = split_backend(backend);
  transport::options topts;
  topts.fabric_payload = payload_mode;
  topts.segment_bytes_max = std::max<std::size_t>(bytes, 1 << 20);
  topts.window_bytes = window_for(o, bytes);
  auto rx = transport::listen(bind_address(scheme), topts);
  if (!rx) {
    p.note = rx.err().to_string();
    return p;
  }
  auto tx = transport::connect((*rx)->address(), topts);
  if (!tx) {
    p.note = tx.err().to_string();
    return p;
  }
  // One payload, shared by every send (buffer::share): no allocation, no page faults, one
  // registration (fabric caches it). Its checksum is computed once, as a producer would.
  auto storage = patterned(bytes);
  const std::uint64_t checksum = messages::checksum_xxh3(storage.bytes());
  std::byte* data = storage.data();
  std::shared_ptr<void> owner = storage.release_owner();
  std::uint64_t request = 1;
  auto make = [&] {
    auto h = header_for(bytes, request++);
    h.checksum_xxh3 = checksum;
    return transport::segment{h, transport::buffer::share(owner, data, bytes)};
  };

  const int lat_n = latency_count(o, bytes), n = stream_count(o, bytes);
  // The first `warm` lone segments are not timed: the handshake (first credit) and the first
  // registration happen there, not in the figures.
  const int warm = 2;
  std::vector<clock_type::time_point> sent_at(static_cast<std::size_t>(lat_n));
  std::vector<double> lat;
  std::atomic<int> received{0};
  std::atomic<bool> zero_copy{true};
  std::string receive_error;
  std::thread receiving([&] {
    for (int i = 0; i < lat_n + n; ++i) {
      auto s = (*rx)->recv(10s);
      if (!s) {
        receive_error = s.err().to_string();
        received.store(-1);
        return;
      }
      if (i >= warm && i < lat_n)
        lat.push_back(seconds_since(sent_at[static_cast<std::size_t>(i)]) * 1e6);
      if (s->payload.data() != data) zero_copy = false;
      received.fetch_add(1, std::memory_order_release);
    }
  });
  std::string send_error;
  for (int i = 0; i < lat_n && send_error.empty(); ++i) {
    sent_at[static_cast<std::size_t>(i)] = clock_type::now();
    if (auto ok = (*tx)->send(make(), 10s); !ok) send_error = ok.err().to_string();
    while (received.load(std::memory_order_acquire) == i) std::this_thread::yield();
  }
  auto t0 = clock_type::now();
  for (int i = 0; i < n && send_error.empty(); ++i)
    if (auto ok = (*tx)->send(make(), 10s); !ok) send_error = ok.err().to_string();
  if (send_error.empty())
    if (auto ok = (*tx)->flush(10s); !ok) send_error = ok.err().to_string();
  receiving.join();
  const double secs = seconds_since(t0);
  if (!send_error.empty() || !receive_error.empty()) {
    p.note = send_error.empty() ? receive_error : send_error;
    return p;
  }
  p.gbps = static_cast<double>(bytes) * n / secs / 1e9;
  p.p50_us = percentile(lat, 0.5);
  p.p99_us = percentile(lat, 0.99);
  p.iterations = n;
  if (backend == "inproc" && zero_copy) p.note = "payload not copied (same bytes arrive)";
  return p;
}

} // namespace

std::size_t envelope_bytes() {
  messages::kv_envelope e;
  e.header = header_for(1 << 20, 123456789);
  e.header.checksum_xxh3 = 0x0123456789abcdefull;
  e.sequence = 1000;
  e.placement = messages::payload_placement::next_frame;
  return messages::encode_frame(e).size();
}

std::vector<transport_point> run_transport_bench(const transport_bench_options& o) {
  std::vector<transport_point> out;
  auto wants = [&](const std::string& prefix) {
    return std::any_of(o.backends.begin(), o.backends.end(),
                       [&](const std::string& b) { return b.rfind(prefix, 0) == 0; });
  };
  // The additional baselines (see transport_bench.hpp) run only next to the backends they
  // are for.
  const bool shm = wants("fabric+shm"), zmq_tcp = wants("zmq+tcp"), zmq_ipc = wants("zmq+ipc");
  const std::size_t extra = 1 + (shm ? 2 : 0) + (zmq_tcp ? 2 : 0) + (zmq_ipc ? 1 : 0);
  const int rounds = std::max(1, o.rounds);
  const double points =
      static_cast<double>(o.sizes.size() * (3 + extra + o.backends.size())) * rounds;
  double done = 0;
  for (std::size_t bytes : o.sizes) {
    // This size's points in print order, each merged over the rounds.
    std::vector<transport_point> size_points;
    std::vector<std::vector<double>> p50s;       // per point, per round
    std::vector<std::vector<std::string>> notes; // per point, per round
    auto measure = [&](const std::string& name, auto&& run) {
      if (o.on_progress)
        o.on_progress(done++ / points, name + " " + std::to_string(bytes >> 10) + " KiB");
      transport_point p = run();
      auto it = std::find_if(size_points.begin(), size_points.end(),
                             [&](const transport_point& q) { return q.name == p.name; });
      if (it == size_points.end()) {
        p.round_gbps = {p.gbps};
        p50s.push_back({p.p50_us});
        notes.push_back({p.note});
        size_points.push_back(std::move(p));
        return;
      }
      const auto i = static_cast<std::size_t>(it - size_points.begin());
      it->round_gbps.push_back(p.gbps);
      p50s[i].push_back(p.p50_us);
      notes[i].push_back(p.note);
      it->gbps = std::max(it->gbps, p.gbps);
      it->p99_us = std::max(it->p99_us, p.p99_us);
      it->iterations += p.iterations;
    };
    // Round after round, every baseline and backend once per round: a ratio is then between
    // figures measured seconds apart, in the same phase of a shared VM's speed.
    for (int round = 0; round < rounds; ++round) {
      measure("memcpy", [&] { return bench_memcpy(o, bytes); });
      measure("memcpy ring", [&] { return bench_ring(o, bytes, false); });
      if (shm) measure("cma ring", [&] { return bench_ring(o, bytes, true); });
      if (shm) measure("cma ring +xxh3", [&] { return bench_cma_verified(o, bytes); });
      measure("raw zmq+tcp", [&] { return bench_raw_zmq(o, bytes, "tcp"); });
      if (zmq_tcp)
        measure("raw zmq+tcp +xxh3", [&] { return bench_raw_zmq(o, bytes, "tcp", true); });
      // zmq+tcp sends a payload over 1 MiB as 1 MiB frames: the same, bare.
      constexpr std::size_t zmq_frame = std::size_t{1} << 20;
      if (zmq_tcp && bytes > zmq_frame)
        measure("raw zmq+tcp framed +xxh3",
                [&] { return bench_raw_zmq(o, bytes, "tcp", true, zmq_frame); });
      measure("raw zmq+ipc", [&] { return bench_raw_zmq(o, bytes, "ipc"); });
      if (zmq_ipc)
        measure("raw zmq+ipc +xxh3", [&] { return bench_raw_zmq(o, bytes, "ipc", true); });
      for (const auto& b : o.backends) measure(b, [&] { return bench_backend(o, bytes, b); });
    }
    for (std::size_t i = 0; i < size_points.size(); ++i) {
      auto& p = size_points[i];
      p.p50_us = percentile(p50s[i], 0.5);
      // A note that not every round gave (an error in one round, a copy in one) is shown with
      // the others, not as if it held for all.
      std::vector<std::string> distinct;
      for (const auto& n : notes[i])
        if (std::find(distinct.begin(), distinct.end(), n) == distinct.end()) distinct.push_back(n);
      if (distinct.size() > 1) {
        p.note = "rounds differ:";
        for (const auto& n : distinct) p.note += " [" + (n.empty() ? "no note" : n) + "]";
      }
    }
    auto best = [&](const std::string& name) {
      for (const auto& p : size_points)
        if (p.name == name) return p.gbps;
      return 0.0;
    };
    const double ring = best("memcpy ring"), cma = best("cma ring"),
                 cma_verified = best("cma ring +xxh3"), raw_tcp_hash = best("raw zmq+tcp +xxh3"),
                 raw_tcp_framed_hash = best("raw zmq+tcp framed +xxh3"),
                 raw_ipc_hash = best("raw zmq+ipc +xxh3");
    auto pct = [](double a, double b) {
      return b > 0 ? std::to_string(static_cast<int>(100.0 * a / b + 0.5)) + "%" : "-";
    };
    for (auto& p : size_points) {
      const std::string& b = p.name;
      // The comparisons with the additional baselines (the "vs base" column keeps the
      // issue's own: memcpy, raw ZeroMQ).
      if (p.gbps > 0 && p.note.empty()) {
        if (b.rfind("fabric+shm", 0) == 0)
          p.note = pct(p.gbps, ring) + " of memcpy ring, " + pct(p.gbps, cma) + " of cma ring, " +
                   pct(p.gbps, cma_verified) + " of cma ring +xxh3";
        else if (b.rfind("fabric", 0) == 0)
          p.note = pct(p.gbps, ring) + " of memcpy ring";
        else if (b == "zmq+tcp")
          p.note = pct(p.gbps, raw_tcp_hash) + " of raw zmq+tcp +xxh3" +
                   (raw_tcp_framed_hash > 0 ? ", " + pct(p.gbps, raw_tcp_framed_hash) + " of framed"
                                            : std::string());
        else if (b == "zmq+ipc")
          p.note = pct(p.gbps, raw_ipc_hash) + " of raw zmq+ipc +xxh3";
      }
      out.push_back(std::move(p));
    }
  }
  if (o.on_progress) o.on_progress(1.0, "done");
  return out;
}

} // namespace duet::bench
