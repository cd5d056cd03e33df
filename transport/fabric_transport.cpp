// fabric+<provider>:// — libfabric RDM endpoints (shm, tcp;ofi_rxm, verbs;ofi_rxm, efa).
//
// Protocol (control frames are Cap'n Proto TransportFrames sent with fi_tinject, tag 1):
//   sender -> receiver  hello {streamId, endpointName}
//   receiver -> sender  credit {window bytes, RMA address + key of a window registered for
//                       this sender}; later credits return released bytes
//   sender              fi_writemsg(payload -> window + offset) with remote CQ data = a
//                       token of (stream, sequence), then envelope {remote: offset, length}
//   receiver            holds the envelope until the write's token appears in its CQ (the
//                       data has landed: no ordering between the two is assumed), checks the
//                       bytes in place and hands out a buffer that points into the window;
//                       releasing it frees that part of the ring and returns credit
// (FI_DELIVERY_COMPLETE + envelope after completion was measured first: ~10x slower on shm.)
// The window is a ring: the sender allocates contiguous regions in order (skipping the tail
// when a segment does not fit before the end, which costs that padding as credit too); the
// receiver frees in order. Payload copies: the RMA write itself (by the NIC, CMA or the shm
// provider's bounce buffers), none by us on either side.
// Pipelining: send() returns once the write and its envelope are posted; the payload's owner is
// held until the write's local completion is reaped (by later send()/flush() calls, or by the
// sender's progress thread while the user is idle: tcp;ofi_rxm and shm SAR need the initiator's
// progress). Up to 64 writes (and the receiver's window in bytes) may be in flight; flush() waits
// for all. Measured (duet bench transport, 1 MiB, same run, loaded 2-core machine): shm
// 1.37-1.48 -> 3.5-3.8 GB/s, tcp 0.37 -> 0.42-0.54 GB/s. FI_SHM_DISABLE_CMA=1 (SAR) measured
// slower here with pipelining (1.27-1.36 GB/s), so it is not forced.
//
// Every provider that can open here (shm, tcp) supports FI_RMA; providers without it are
// refused at open with backend_unavailable (a tagged-message fallback is not implemented),
// as are providers with less than 8 bytes of remote CQ data.
// verbs and efa are compiled into Debian's libfabric but find no device on this machine:
// opening them returns backend_unavailable naming the provider.

#include "transport/arrival_checker.hpp"
#include "transport/backends.hpp"
#include "transport/sender_common.hpp"

#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>
#include <rdma/fi_tagged.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <list>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

namespace duet::transport {

namespace {

constexpr std::uint64_t ctrl_tag = 1;
constexpr std::size_t ctrl_bytes = 4096; ///< largest control frame (envelopes are ~200 bytes)
constexpr std::size_t ctrl_posted = 32;  ///< control receives kept posted per endpoint

std::string fi_error(int rc) {
  return std::string(fi_strerror(rc < 0 ? -rc : rc));
}

/// libfabric's provider string for a duet flavor.
const char* provider_name(const std::string& flavor) {
  if (flavor == "tcp") return "tcp;ofi_rxm";
  if (flavor == "verbs") return "verbs;ofi_rxm";
  return flavor.c_str() == nullptr ? "" : (flavor == "shm" ? "shm" : "efa");
}

std::string to_hex(std::span<const std::byte> b) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (auto c : b) {
    s += digits[static_cast<unsigned>(c) >> 4];
    s += digits[static_cast<unsigned>(c) & 15];
  }
  return s;
}

std::vector<std::byte> from_hex(const std::string& s) {
  std::vector<std::byte> out;
  auto v = [](char c) { return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10; };
  for (std::size_t i = 0; i + 1 < s.size(); i += 2)
    out.push_back(static_cast<std::byte>(v(s[i]) << 4 | v(s[i + 1])));
  return out;
}

/// The remote CQ data of a segment's RMA write: which stream and sequence it belongs to.
std::uint64_t write_token(std::uint64_t stream_id, std::uint64_t sequence) {
  return stream_id << 32 ^ (sequence & 0xffffffffu);
}

/// One operation with a completion: fi_context2 first, as FI_CONTEXT2 mode requires.
struct fabric_op {
  fi_context2 ctx{};
  enum kind_t { ctrl_recv, rma_write } kind = ctrl_recv;
  std::size_t index = 0; ///< ctrl_recv: which buffer
  bool done = false;
  int err = 0;
};

/// Waiting for completions: spin briefly, then yield for a couple of milliseconds (a peer
/// thread or process is usually about to answer), then sleep in short naps so a long idle wait
/// does not burn a core (2 shared cores here; a sleeping waiter must not starve its peer).
class backoff {
public:
  void pause() {
    if (++spins_ < 2000) return;
    auto now = std::chrono::steady_clock::now();
    if (spins_ == 2000) idle_since_ = now;
    if (now - idle_since_ < std::chrono::milliseconds(2))
      std::this_thread::yield();
    else
      std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  void reset() { spins_ = 0; }

private:
  int spins_ = 0;
  std::chrono::steady_clock::time_point idle_since_;
};

/// The libfabric objects of one endpoint, opened for a provider, with control receives posted.
class fabric_endpoint {
public:
  ~fabric_endpoint() { close(); }

  result<void> open(const address& a) {
    flavor_ = a.flavor;
    fi_info* hints = fi_allocinfo();
    if (hints == nullptr) return fail(errc::internal, "fi_allocinfo");
    hints->ep_attr->type = FI_EP_RDM;
    hints->caps = FI_TAGGED | FI_RMA | FI_MSG;
    hints->mode = FI_CONTEXT | FI_CONTEXT2;
    hints->domain_attr->mr_mode = FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY;
    hints->fabric_attr->prov_name = strdup(provider_name(a.flavor));
    std::string node, service;
    if (!a.location.empty()) {
      auto colon = a.location.rfind(':');
      node = a.location.substr(0, colon);
      if (colon != std::string::npos) service = a.location.substr(colon + 1);
      if (service == "0") service.clear();
    }
    int rc = fi_getinfo(FI_VERSION(1, 17), node.empty() ? nullptr : node.c_str(),
                        service.empty() ? nullptr : service.c_str(), node.empty() ? 0 : FI_SOURCE,
                        hints, &info_);
    fi_freeinfo(hints);
    if (rc != 0)
      return fail(errc::backend_unavailable,
                  "fabric+" + a.flavor + ": libfabric provider '" + provider_name(a.flavor) +
                      "' is not available here (fi_getinfo: " + fi_error(rc) +
                      "); it needs its hardware (verbs: an RDMA NIC, efa: an AWS EFA device)");
    if ((info_->caps & FI_RMA) == 0 || info_->domain_attr->cq_data_size < 8)
      return fail(errc::backend_unavailable,
                  "fabric+" + a.flavor + ": provider lacks FI_RMA with 8 bytes of remote CQ data");
    if ((rc = fi_fabric(info_->fabric_attr, &fabric_, nullptr)) != 0)
      return failed("fi_fabric", rc);
    if ((rc = fi_domain(fabric_, info_, &domain_, nullptr)) != 0) return failed("fi_domain", rc);
    fi_cq_attr cq_attr{};
    cq_attr.format = FI_CQ_FORMAT_TAGGED;
    cq_attr.size = 1024;
    if ((rc = fi_cq_open(domain_, &cq_attr, &cq_, nullptr)) != 0) return failed("fi_cq_open", rc);
    fi_av_attr av_attr{};
    av_attr.type = FI_AV_TABLE;
    if ((rc = fi_av_open(domain_, &av_attr, &av_, nullptr)) != 0) return failed("fi_av_open", rc);
    if ((rc = fi_endpoint(domain_, info_, &ep_, nullptr)) != 0) return failed("fi_endpoint", rc);
    if ((rc = fi_ep_bind(ep_, &cq_->fid, FI_TRANSMIT | FI_RECV)) != 0)
      return failed("fi_ep_bind cq", rc);
    if ((rc = fi_ep_bind(ep_, &av_->fid, 0)) != 0) return failed("fi_ep_bind av", rc);
    if ((rc = fi_enable(ep_)) != 0) return failed("fi_enable", rc);
    ctrl_ = std::make_unique<std::byte[]>(ctrl_bytes * ctrl_posted);
    if (auto r = reg(ctrl_.get(), ctrl_bytes * ctrl_posted, FI_RECV, &ctrl_mr_); !r) return r;
    ctrl_ops_.resize(ctrl_posted);
    for (std::size_t i = 0; i < ctrl_posted; ++i) {
      ctrl_ops_[i].index = i;
      if (auto r = post_ctrl(i); !r) return r;
    }
    return {};
  }

  void close() {
    if (ep_ != nullptr) fi_close(&ep_->fid);
    ep_ = nullptr;
    if (ctrl_mr_ != nullptr) fi_close(&ctrl_mr_->fid);
    ctrl_mr_ = nullptr;
    if (av_ != nullptr) fi_close(&av_->fid);
    av_ = nullptr;
    if (cq_ != nullptr) fi_close(&cq_->fid);
    cq_ = nullptr;
    if (domain_ != nullptr) fi_close(&domain_->fid);
    domain_ = nullptr;
    if (fabric_ != nullptr) fi_close(&fabric_->fid);
    fabric_ = nullptr;
    if (info_ != nullptr) fi_freeinfo(info_);
    info_ = nullptr;
  }

  error failed(const char* what, int rc) const {
    return fail(errc::internal, "fabric+" + flavor_ + ": " + what + ": " + fi_error(rc));
  }

  /// Registers memory for `access`; null desc is fine when the provider needs none.
  result<void> reg(void* p, std::size_t n, std::uint64_t access, fid_mr** mr) {
    // Providers without FI_MR_PROV_KEY take our key, which must be unique in the domain.
    static std::atomic<std::uint64_t> next_key{1};
    int rc = fi_mr_reg(domain_, p, n, access, 0, next_key.fetch_add(1), 0, mr, nullptr);
    if (rc != 0) return failed("fi_mr_reg", rc);
    return {};
  }

  void* desc(fid_mr* mr) const {
    return (info_->domain_attr->mr_mode & FI_MR_LOCAL) != 0 ? fi_mr_desc(mr) : nullptr;
  }

  bool virt_addr() const { return (info_->domain_attr->mr_mode & FI_MR_VIRT_ADDR) != 0; }

  result<void> post_ctrl(std::size_t i) {
    for (;;) {
      ssize_t rc = fi_trecv(ep_, ctrl_.get() + i * ctrl_bytes, ctrl_bytes, desc(ctrl_mr_),
                            FI_ADDR_UNSPEC, ctrl_tag, 0, &ctrl_ops_[i].ctx);
      if (rc == 0) return {};
      if (rc != -FI_EAGAIN) return failed("fi_trecv", static_cast<int>(rc));
      drive();
    }
  }

  /// Sends a small control frame (copied by the provider: no buffer to keep).
  result<void> send_ctrl(fi_addr_t to, const messages::stream_frame& f,
                         std::chrono::steady_clock::time_point deadline) {
    return send_bytes(to, messages::encode_frame(f), deadline);
  }

  result<void> send_bytes(fi_addr_t to, std::span<const std::byte> bytes,
                          std::chrono::steady_clock::time_point deadline) {
    backoff wait;
    for (;;) {
      ssize_t rc = fi_tinject(ep_, bytes.data(), bytes.size(), to, ctrl_tag);
      if (rc == 0) return {};
      if (rc != -FI_EAGAIN) return failed("fi_tinject", static_cast<int>(rc));
      if (std::chrono::steady_clock::now() > deadline)
        return fail(errc::timeout, "fabric+" + flavor_ + ": control send stalled");
      drive();
      wait.pause();
    }
  }

  /// Reads completions: control frames go to on_ctrl(bytes), RMA writes are marked done.
  /// Returns how many completions were read, or an error from the CQ.
  template <class OnCtrl>
  result<int> poll(OnCtrl&& on_ctrl) {
    fi_cq_tagged_entry entries[16];
    ssize_t n = fi_cq_read(cq_, entries, 16);
    if (n == -FI_EAGAIN) return 0;
    if (n == -FI_EAVAIL) {
      fi_cq_err_entry e{};
      fi_cq_readerr(cq_, &e, 0);
      auto* op = static_cast<fabric_op*>(e.op_context);
      if (op != nullptr && op->kind == fabric_op::ctrl_recv) {
        // An oversized control frame (FI_ETRUNC): drop it, keep the receive posted.
        if (auto r = post_ctrl(op->index); !r) return r.err();
        return fail(errc::malformed,
                    "fabric+" + flavor_ + ": control frame error: " + fi_error(e.err));
      }
      if (op != nullptr) {
        op->done = true;
        op->err = e.err;
      }
      return fail(errc::peer_dead, "fabric+" + flavor_ + ": operation failed: " + fi_error(e.err));
    }
    if (n < 0) return failed("fi_cq_read", static_cast<int>(n));
    for (ssize_t i = 0; i < n; ++i) {
      if ((entries[i].flags & FI_REMOTE_CQ_DATA) != 0) { // an RMA write landed here
        landed_.insert(entries[i].data);
        continue;
      }
      auto* op = static_cast<fabric_op*>(entries[i].op_context);
      if (op == nullptr) continue;
      if (op->kind == fabric_op::ctrl_recv) {
        on_ctrl(std::span<const std::byte>(ctrl_.get() + op->index * ctrl_bytes, entries[i].len));
        if (auto r = post_ctrl(op->index); !r) return r.err();
      } else {
        op->done = true;
      }
    }
    return static_cast<int>(n);
  }

  /// Tokens (remote CQ data) of RMA writes that have landed in this endpoint's memory.
  std::multiset<std::uint64_t>& landed() { return landed_; }

  /// Drives progress without handling control frames (used while posting).
  void drive() { fi_cq_read(cq_, nullptr, 0); }

  std::vector<std::byte> name() const {
    std::vector<std::byte> n(256);
    std::size_t len = n.size();
    if (fi_getname(&ep_->fid, n.data(), &len) != 0) len = 0;
    n.resize(len);
    return n;
  }

  result<fi_addr_t> insert(const std::vector<std::byte>& name) {
    fi_addr_t addr = FI_ADDR_UNSPEC;
    int rc = fi_av_insert(av_, name.data(), 1, &addr, 0, nullptr);
    if (rc != 1) return fail(errc::bad_address, "fabric+" + flavor_ + ": fi_av_insert failed");
    return addr;
  }

  fid_ep* ep() { return ep_; }
  fid_domain* domain() { return domain_; }
  const std::string& flavor() const { return flavor_; }

private:
  std::string flavor_;
  fi_info* info_ = nullptr;
  fid_fabric* fabric_ = nullptr;
  fid_domain* domain_ = nullptr;
  fid_cq* cq_ = nullptr;
  fid_av* av_ = nullptr;
  fid_ep* ep_ = nullptr;
  fid_mr* ctrl_mr_ = nullptr;
  std::unique_ptr<std::byte[]> ctrl_;
  std::vector<fabric_op> ctrl_ops_;
  std::multiset<std::uint64_t> landed_;
};

// -- receiver ----------------------------------------------------------------------------------

/// The ring of one sender's window; shared with the buffers that point into it.
struct fabric_ring {
  struct entry {
    std::uint64_t start; ///< virtual offset (monotonic)
    std::uint64_t consumed;
    bool released;
  };
  std::shared_ptr<std::byte> memory; ///< window_bytes, freed when the last buffer goes
  std::mutex mu;
  std::deque<entry> entries;
  std::uint64_t grant_pending = 0; ///< freed bytes not yet sent back as credit

  void release(std::uint64_t start) {
    std::lock_guard lock(mu);
    for (auto& e : entries)
      if (e.start == start) e.released = true;
    while (!entries.empty() && entries.front().released) {
      grant_pending += entries.front().consumed;
      entries.pop_front();
    }
  }
};

struct fabric_stream {
  std::uint64_t id = 0;
  fi_addr_t peer = FI_ADDR_UNSPEC;
  std::uint64_t window_bytes = 0;
  std::uint64_t head = 0; ///< virtual offset of the next expected region
  fid_mr* mr = nullptr;
  std::shared_ptr<fabric_ring> ring;
};

class fabric_receiver final : public receiver {
public:
  explicit fabric_receiver(const options& opts) : opts_(opts), checker_(opts_) {}

  ~fabric_receiver() override {
    for (auto& [id, st] : streams_)
      if (st.mr != nullptr) fi_close(&st.mr->fid);
    ep_.close();
  }

  result<void> open(const transport::address& at) {
    if (auto r = ep_.open(at); !r) return r;
    transport::address concrete = at;
    concrete.fabric_name_hex = to_hex(ep_.name());
    address_ = concrete.to_string();
    return {};
  }

  std::string address() const override { return address_; }

  result<segment> recv(milliseconds timeout) override {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    backoff wait;
    bool idle = false; // the last CQ poll found nothing
    for (;;) {
      if (!ready_.empty()) {
        auto out = std::move(ready_.front());
        ready_.pop_front();
        return out;
      }
      if (auto r = send_grants(deadline, idle); !r) return r.err();
      auto n = ep_.poll([&](std::span<const std::byte> bytes) {
        auto r = handle(bytes);
        if (r.ok() || r.code() != errc::ok) ready_.push_back(std::move(r));
      });
      if (!n) return arrival_checker::reject(stats_, n.code(), n.err().context);
      drain_waiting();
      idle = *n == 0;
      if (!idle) {
        wait.reset();
        continue;
      }
      if (std::chrono::steady_clock::now() >= deadline)
        return fail(errc::timeout, address_ + ": nothing arrived within " +
                                       std::to_string(timeout.count()) + " ms");
      wait.pause();
    }
  }

  const counters& stats() const override { return stats_; }

private:
  /// Returns freed window bytes to their senders: batched (a quarter window at a time) while
  /// completions keep coming, everything once idle (`all`).
  result<void> send_grants(std::chrono::steady_clock::time_point deadline, bool all) {
    for (auto& [id, st] : streams_) {
      std::uint64_t grant;
      {
        std::lock_guard lock(st.ring->mu);
        if (st.ring->grant_pending == 0 || (!all && st.ring->grant_pending < st.window_bytes / 4))
          continue;
        grant = std::exchange(st.ring->grant_pending, 0);
      }
      if (auto r = ep_.send_ctrl(st.peer, messages::credit_grant{id, grant, 0, 0, 0, 0}, deadline);
          !r)
        return r;
    }
    return {};
  }

  /// A segment, an error for the caller, or error{ok} when a control frame was consumed.
  result<segment> handle(std::span<const std::byte> bytes) {
    auto frame = messages::decode_frame(bytes, opts_.segment_bytes_max);
    if (!frame) {
      errc code = frame.why().kind == messages::problem_kind::truncated   ? errc::truncated
                  : frame.why().kind == messages::problem_kind::oversized ? errc::oversized
                                                                          : errc::malformed;
      return arrival_checker::reject(stats_, code, address_ + ": " + frame.why().context);
    }
    if (auto* hello = std::get_if<messages::stream_hello>(&*frame)) return on_hello(*hello);
    if (auto* bye = std::get_if<messages::stream_bye>(&*frame)) {
      (void)bye;
      return error{errc::ok, {}};
    }
    auto* env = std::get_if<messages::kv_envelope>(&*frame);
    if (env == nullptr)
      return arrival_checker::reject(stats_, errc::malformed, address_ + ": unexpected frame kind");
    // The envelope may overtake its RMA write: it waits for the write's token.
    waiting_.push_back(std::move(*env));
    return error{errc::ok, {}};
  }

  /// Hands out envelopes whose writes have landed, in arrival order.
  void drain_waiting() {
    while (!waiting_.empty()) {
      auto& landed = ep_.landed();
      auto tok = landed.find(write_token(waiting_.front().stream_id, waiting_.front().sequence));
      if (tok == landed.end()) return;
      landed.erase(tok);
      auto env = std::move(waiting_.front());
      waiting_.pop_front();
      auto r = on_segment(&env);
      if (r.ok() || r.code() != errc::ok) ready_.push_back(std::move(r));
    }
  }

  result<segment> on_segment(const messages::kv_envelope* env) {
    auto it = streams_.find(env->stream_id);
    if (it == streams_.end())
      return arrival_checker::reject(stats_, errc::malformed,
                                     address_ + ": segment for unknown stream " +
                                         std::to_string(env->stream_id));
    auto& st = it->second;
    if (env->placement != messages::payload_placement::remote_region)
      return arrival_checker::reject(stats_, errc::malformed,
                                     address_ + ": fabric segments arrive by RMA (remote region)");
    // Where the sender must have written, by the ring rule.
    const std::uint64_t w = st.window_bytes, len = env->remote_length;
    const std::uint64_t pos = st.head % w;
    std::uint64_t pad = 0;
    if (env->remote_offset == pos && pos + len <= w) {
      pad = 0;
    } else if (env->remote_offset == 0 && pos + len > w) {
      pad = w - pos;
    } else {
      return arrival_checker::reject(stats_, errc::malformed,
                                     address_ + ": remote region at " +
                                         std::to_string(env->remote_offset) +
                                         " breaks the ring (expected " + std::to_string(pos) + ")");
    }
    const std::uint64_t start = st.head;
    st.head += pad + len;
    {
      std::lock_guard lock(st.ring->mu);
      st.ring->entries.push_back({start, pad + len, false});
    }
    std::byte* data = st.ring->memory.get() + env->remote_offset;
    std::shared_ptr<void> owner(data, [ring = st.ring, start](void*) { ring->release(start); });
    buffer payload = buffer::share(std::move(owner), data, len);
    auto ok = checker_.check(env->stream_id, *env, payload.bytes(), stats_);
    if (!ok) return ok.err();
    return segment{env->header, std::move(payload)};
  }

  result<segment> on_hello(const messages::stream_hello& hello) {
    auto peer = ep_.insert(hello.endpoint_name);
    if (!peer) return arrival_checker::reject(stats_, errc::malformed, peer.err().context);
    fabric_stream st;
    st.id = hello.stream_id;
    st.peer = *peer;
    st.window_bytes = opts_.window_bytes;
    st.ring = std::make_shared<fabric_ring>();
    void* mem = std::aligned_alloc(4096, (opts_.window_bytes + 4095) / 4096 * 4096);
    if (mem == nullptr) return fail(errc::internal, address_ + ": cannot allocate the window");
    // Fault the window in now, once per sender: a first RMA write into untouched pages of
    // this process (CMA, the kernel's TCP receive path) was measured ~10x slower than into
    // resident ones. Registered memory is committed memory anyway (verbs/efa pin it).
    std::memset(mem, 0, opts_.window_bytes);
    st.ring->memory = std::shared_ptr<std::byte>(static_cast<std::byte*>(mem),
                                                 [](std::byte* p) { std::free(p); });
    if (auto r = ep_.reg(mem, opts_.window_bytes, FI_REMOTE_WRITE, &st.mr); !r) return r.err();
    const std::uint64_t addr = ep_.virt_addr() ? reinterpret_cast<std::uint64_t>(mem) : 0;
    const std::uint64_t key = fi_mr_key(st.mr);
    auto old = streams_.find(st.id);
    if (old != streams_.end()) {
      if (old->second.mr != nullptr) fi_close(&old->second.mr->fid);
      streams_.erase(old);
    }
    checker_.forget_stream(st.id);
    auto id = st.id;
    auto to = st.peer;
    streams_.emplace(id, std::move(st));
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    if (auto r = ep_.send_ctrl(to,
                               messages::credit_grant{id, opts_.window_bytes, opts_.window_bytes,
                                                      opts_.segment_bytes_max, addr, key},
                               deadline);
        !r)
      return r.err();
    return error{errc::ok, {}};
  }

  options opts_;
  fabric_endpoint ep_;
  std::string address_;
  arrival_checker checker_;
  counters stats_;
  std::map<std::uint64_t, fabric_stream> streams_;
  /// Arrivals already read from the CQ (one poll may complete several), in order.
  std::deque<result<segment>> ready_;
  /// Envelopes whose RMA write has not been seen landing yet.
  std::deque<messages::kv_envelope> waiting_;
};

// -- sender ------------------------------------------------------------------------------------

/// A payload being written: kept alive (and registered) until its write completes, then its
/// envelope goes out.
struct fabric_write {
  fabric_op op;
  std::shared_ptr<void> owner;
  std::vector<std::byte> envelope;
};

class fabric_sender final : public sender {
public:
  explicit fabric_sender(const options& opts) : opts_(opts) {}

  ~fabric_sender() override {
    (void)flush(std::chrono::milliseconds(1000));
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    wake_.notify_all();
    if (progress_.joinable()) progress_.join();
    if (peer_ != FI_ADDR_UNSPEC)
      (void)ep_.send_ctrl(peer_, messages::stream_bye{},
                          std::chrono::steady_clock::now() + std::chrono::milliseconds(100));
    for (auto& c : mr_cache_) fi_close(&c.mr->fid);
    mr_cache_.clear();
    ep_.close();
  }

  result<void> open(const transport::address& to) {
    if (to.fabric_name_hex.empty())
      return fail(errc::bad_address, to.to_string() + ": a fabric sender needs the receiver's "
                                                      "concrete address (with ?name=)");
    transport::address local = to;
    local.fabric_name_hex.clear();
    if (auto r = ep_.open(local); !r) return r;
    auto peer = ep_.insert(from_hex(to.fabric_name_hex));
    if (!peer) return peer.err();
    peer_ = *peer;
    name_ = to.to_string();
    stream_id_ = std::random_device{}() | std::uint64_t{std::random_device{}()} << 32;
    // The hello goes out from pump(): a provider may need the receiver's progress before the
    // first send to it succeeds (shm maps the peer first), and connect() must not wait.
    hello_ = messages::encode_frame(
        messages::stream_hello{messages::stream_protocol_version, stream_id_, ep_.name()});
    if (auto r = try_hello(); !r) return r;
    progress_ = std::thread([this] { progress_loop(); });
    return {};
  }

  result<void> send(segment seg, milliseconds timeout) override {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    call_guard call(*this);
    if (auto r = take_deferred(); !r) return r;
    while (window_ == 0)
      if (auto r = pump(deadline); !r)
        return fail(r.code(), name_ + ": the receiver did not answer within " +
                                  std::to_string(timeout.count()) + " ms (" + r.err().context +
                                  ")");
    options limits = opts_;
    limits.segment_bytes_max = std::min<std::size_t>(opts_.segment_bytes_max, receiver_max_);
    if (auto ok = prepare_segment(seg, limits, window_); !ok) return ok;
    auto f = apply_faults(faults_, seg);
    if (f.skip_sequence) ++sequence_;
    const int copies = f.duplicate ? 2 : 1;
    const std::size_t n = seg.payload.size();
    std::byte* data = seg.payload.data();
    auto owner = seg.payload.release_owner();
    auto desc = register_payload(owner, data, n);
    if (!desc) return desc.err();
    const std::uint64_t sequence = sequence_;
    for (int i = 0; i < copies; ++i) {
      // Ring allocation: contiguous, in order, skipping the tail when it does not fit.
      const std::uint64_t pos = head_ % window_;
      const std::uint64_t pad = pos + n > window_ ? window_ - pos : 0;
      while (credit_ < pad + n)
        if (auto r = pump(deadline); !r)
          return fail(r.code(), name_ + ": no credit for " + std::to_string(n) + " bytes within " +
                                    std::to_string(timeout.count()) + " ms (" +
                                    std::to_string(window_ - credit_) + " bytes unreleased)");
      // Writes in flight are bounded by count too (the CQ has room for every completion).
      while (writes_.size() >= writes_in_flight_max)
        if (auto r = wait_for_write(deadline); !r) return r;
      const std::uint64_t offset = pad != 0 ? 0 : pos;
      head_ += pad + n;
      credit_ -= pad + n;
      auto w = std::make_unique<fabric_write>();
      w->op.kind = fabric_op::rma_write;
      w->owner = owner;
      messages::kv_envelope e;
      e.header = seg.header;
      e.sequence = sequence;
      e.stream_id = stream_id_;
      e.placement = messages::payload_placement::remote_region;
      e.remote_offset = offset;
      e.remote_length = n;
      w->envelope = messages::encode_frame(e);
      iovec iov{data, n};
      void* d = *desc;
      fi_rma_iov rma{window_address_ + offset, n, window_key_};
      fi_msg_rma msg{};
      msg.msg_iov = &iov;
      msg.desc = &d;
      msg.iov_count = 1;
      msg.addr = peer_;
      msg.rma_iov = &rma;
      msg.rma_iov_count = 1;
      msg.context = &w->op.ctx;
      msg.data = write_token(stream_id_, sequence);
      backoff wait;
      for (;;) {
        ssize_t rc = fi_writemsg(ep_.ep(), &msg, FI_COMPLETION | FI_REMOTE_CQ_DATA);
        if (rc == 0) break;
        if (rc != -FI_EAGAIN) return ep_.failed("fi_writemsg", static_cast<int>(rc));
        if (std::chrono::steady_clock::now() > deadline)
          return fail(errc::timeout, name_ + ": provider queue full");
        if (auto r = pump_once(); !r) return r;
        wait.pause();
      }
      // The receiver holds the envelope until the write's token lands, so it may go now.
      if (auto r = ep_.send_bytes(peer_, w->envelope, deadline); !r) return r;
      writes_.push_back(std::move(w));
    }
    sequence_ = sequence + 1;
    stats_.segments_sent.fetch_add(1, std::memory_order_relaxed);
    stats_.bytes_sent.fetch_add(n, std::memory_order_relaxed);
    // The write stays in flight (its payload owner is held in writes_ until the completion is
    // reaped): later calls and, between calls, the progress thread drive it to completion.
    // Reap whatever has already completed, so finished payloads go back early.
    if (auto r = pump_once(); !r) return r;
    if (!writes_.empty()) wake_.notify_one();
    return {};
  }

  result<void> flush(milliseconds timeout) override {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    call_guard call(*this);
    if (auto r = take_deferred(); !r) return r;
    backoff wait;
    while (!writes_.empty()) {
      if (auto r = pump_once(); !r) return r;
      if (writes_.empty()) break;
      if (std::chrono::steady_clock::now() > deadline)
        return fail(errc::timeout, name_ + ": " + std::to_string(writes_.size()) +
                                       " RMA writes not completed within " +
                                       std::to_string(timeout.count()) + " ms");
      wait.pause();
    }
    return {};
  }

  std::size_t in_flight_bytes() const override {
    std::lock_guard lock(mu_);
    return window_ - credit_;
  }
  const counters& stats() const override { return stats_; }

private:
  /// RMA writes posted and not yet reaped, at most (each holds its payload alive; the CQ,
  /// 1024 entries, must have room for all their completions and the control frames).
  static constexpr std::size_t writes_in_flight_max = 64;
  /// The progress thread leaves the endpoint alone until the user has made no call for this
  /// long: while segments stream, the user's own calls drive progress without contention.
  static constexpr auto idle_before_progress = std::chrono::microseconds(50);

  /// Holds the endpoint for one user call (send, flush): the progress thread stays out.
  struct call_guard {
    explicit call_guard(fabric_sender& s) : s_(s), lock_(s.mu_) { s_.in_call_.store(true); }
    ~call_guard() {
      s_.last_call_end_.store(std::chrono::steady_clock::now().time_since_epoch().count());
      s_.in_call_.store(false);
    }
    fabric_sender& s_;
    std::unique_lock<std::mutex> lock_;
  };

  /// An error the progress thread met (a failed write, a dead peer): reported by the next call.
  result<void> take_deferred() {
    if (deferred_.code == errc::ok) return {};
    return std::exchange(deferred_, error{errc::ok, {}});
  }

  /// Waits until the oldest write completes (or the deadline passes).
  result<void> wait_for_write(std::chrono::steady_clock::time_point deadline) {
    backoff wait;
    const std::size_t before = writes_.size();
    for (;;) {
      if (auto r = pump_once(); !r) return r;
      if (writes_.size() < before) return {};
      if (std::chrono::steady_clock::now() > deadline)
        return fail(errc::timeout, name_ + ": " + std::to_string(writes_.size()) +
                                       " RMA writes in flight, none completed in time");
      wait.pause();
    }
  }

  /// Nothing else drives a sender between the user's calls, and some providers need the
  /// initiator's progress to finish a write (tcp;ofi_rxm pushes the bytes into the socket,
  /// shm's SAR protocol refills its bounce buffers): while writes are in flight and the user
  /// is idle, this thread polls the CQ under the same lock. It sleeps while nothing is in
  /// flight, so an idle sender costs nothing.
  void progress_loop() {
    std::unique_lock lock(mu_);
    backoff wait;
    while (!stop_) {
      if (writes_.empty()) {
        wake_.wait(lock, [&] { return stop_ || !writes_.empty(); });
        wait.reset();
        continue;
      }
      const auto idle_for = std::chrono::steady_clock::now().time_since_epoch() -
                            std::chrono::steady_clock::duration(last_call_end_.load());
      if (!in_call_.load() && idle_for >= idle_before_progress) {
        if (auto r = pump_once(); !r && deferred_.code == errc::ok) deferred_ = r.err();
      }
      lock.unlock();
      if (in_call_.load() || idle_for < idle_before_progress)
        std::this_thread::sleep_for(idle_before_progress);
      else
        wait.pause();
      lock.lock();
    }
  }

  /// Registration cache: the last few payload owners stay registered (and alive), so a
  /// producer that reuses its buffers registers each once. Bounded: mr_cache_max entries.
  static constexpr std::size_t mr_cache_max = 4;
  struct cached_mr {
    std::shared_ptr<void> owner;
    const std::byte* data;
    std::size_t size;
    fid_mr* mr;
  };

  result<void*> register_payload(const std::shared_ptr<void>& owner, std::byte* data,
                                 std::size_t n) {
    for (auto it = mr_cache_.begin(); it != mr_cache_.end(); ++it)
      if (it->owner == owner && it->data <= data && data + n <= it->data + it->size) {
        mr_cache_.splice(mr_cache_.begin(), mr_cache_, it);
        return ep_.desc(mr_cache_.front().mr);
      }
    fid_mr* mr = nullptr;
    if (auto r = ep_.reg(data, n, FI_WRITE, &mr); !r) return r.err();
    mr_cache_.push_front({owner, data, n, mr});
    while (mr_cache_.size() > mr_cache_max) {
      // Only evict a registration no write in flight still uses.
      auto& last = mr_cache_.back();
      bool busy = false;
      for (auto& w : writes_) busy |= w->owner == last.owner;
      if (busy) break;
      fi_close(&last.mr->fid);
      mr_cache_.pop_back();
    }
    return ep_.desc(mr);
  }

  result<void> try_hello() {
    if (hello_.empty()) return {};
    ssize_t rc = fi_tinject(ep_.ep(), hello_.data(), hello_.size(), peer_, ctrl_tag);
    if (rc == 0)
      hello_.clear();
    else if (rc != -FI_EAGAIN)
      return ep_.failed("fi_tinject hello", static_cast<int>(rc));
    return {};
  }

  /// One pass over the CQ: credits, write completions; envelopes go out in order.
  result<void> pump_once() {
    if (auto r = try_hello(); !r) return r;
    auto n = ep_.poll([&](std::span<const std::byte> bytes) {
      auto frame = messages::decode_frame(bytes, opts_.segment_bytes_max);
      if (!frame) return;
      if (auto* c = std::get_if<messages::credit_grant>(&*frame)) {
        if (c->window_bytes != 0) {
          window_ = c->window_bytes;
          receiver_max_ = c->segment_bytes_max;
          window_address_ = c->window_address;
          window_key_ = c->window_key;
        }
        credit_ += c->grant_bytes;
      }
    });
    if (!n) return n.err();
    while (!writes_.empty() && writes_.front()->op.done) {
      auto& w = *writes_.front();
      if (w.op.err != 0)
        return fail(errc::peer_dead, name_ + ": RMA write failed: " + fi_error(w.op.err));
      writes_.pop_front(); // the provider is done with the payload: release it
    }
    return {};
  }

  /// Waits for at least one completion or control frame, until the deadline.
  result<void> pump(std::chrono::steady_clock::time_point deadline) {
    backoff wait;
    const auto credit_before = credit_;
    const auto window_before = window_;
    for (;;) {
      if (auto r = pump_once(); !r) return r;
      if (credit_ != credit_before || window_ != window_before) return {};
      if (std::chrono::steady_clock::now() >= deadline) return fail(errc::timeout, "timed out");
      wait.pause();
    }
  }

  options opts_;
  fabric_endpoint ep_;
  std::string name_;
  fi_addr_t peer_ = FI_ADDR_UNSPEC;
  std::uint64_t stream_id_ = 0;
  std::uint64_t sequence_ = 0;
  std::uint64_t window_ = 0, credit_ = 0, receiver_max_ = 0, head_ = 0;
  std::uint64_t window_address_ = 0, window_key_ = 0;
  std::vector<std::byte> hello_; ///< not yet accepted by the provider
  std::deque<std::unique_ptr<fabric_write>> writes_;
  std::list<cached_mr> mr_cache_;
  counters stats_;
  // The progress thread (see progress_loop) and what it shares with the user's calls.
  mutable std::mutex mu_; ///< guards the endpoint and every member above
  std::condition_variable wake_;
  bool stop_ = false;
  error deferred_{errc::ok, {}};
  std::atomic<bool> in_call_{false};
  std::atomic<std::int64_t> last_call_end_{0}; ///< steady_clock ticks
  std::thread progress_;
};

} // namespace

result<std::unique_ptr<receiver>> fabric_listen(const address& at, const options& opts) {
  auto r = std::make_unique<fabric_receiver>(opts);
  if (auto ok = r->open(at); !ok) return ok.err();
  return std::unique_ptr<receiver>(std::move(r));
}

result<std::unique_ptr<sender>> fabric_connect(const address& to, const options& opts) {
  auto s = std::make_unique<fabric_sender>(opts);
  if (auto ok = s->open(to); !ok) return ok.err();
  return std::unique_ptr<sender>(std::move(s));
}

} // namespace duet::transport
