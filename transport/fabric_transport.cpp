// fabric+<provider>:// — libfabric RDM endpoints (shm, tcp;ofi_rxm, udp;ofi_rxd, verbs;ofi_rxm,
// efa).
//
// Protocol (control frames are Cap'n Proto TransportFrames on tag 1, sent with fi_tinject; a
// segment's envelope and the goodbye with fi_tsend and a completion except on shm, see
// fabric_endpoint::tracks_frames):
//   sender -> receiver  hello {streamId, endpointName}
//   receiver -> sender  credit {window bytes, RMA address + key of a window registered for
//                       this sender}; later credits return released bytes
//   sender              fi_writemsg(payload -> window + offset) with remote CQ data = a
//                       token of (stream, sequence), then envelope {remote: offset, length}
//   receiver            holds the envelope until the write's token appears in its CQ (the
//                       data has landed: no ordering between the two is assumed), checks the
//                       bytes in place and hands out a buffer that points into the window;
//                       releasing it frees that part of the ring and returns credit
//   receiver -> sender  receipt (a credit of 0 bytes with receiptThrough = the next sequence
//                       not yet taken; every provider but shm, as the first credit says):
//                       flush() waits for it, since tcp;ofi_rxm completes a write once its
//                       bytes are in the kernel's socket buffer (fabric_receiver::taken)
// (FI_DELIVERY_COMPLETE + envelope after completion was measured first: ~10x slower on shm.)
// shm differs (fabric_endpoint::placed_on_completion): its writes carry no remote CQ data and
// the envelope goes out when the write completes, in order (pump_once). Remote CQ data (like
// FI_DELIVERY_COMPLETE) sends libfabric 1.17's shm down its two-command path, where the
// *target* copies the bytes (process_vm_readv, on the receiver's thread, while it also hashes
// them: one core did all the work); without it shm takes its fast path: the initiator copies
// with process_vm_writev inside fi_writemsg and completes at once, so copy (sender's core) and
// xxh3 (receiver's core) overlap. It is sound on shm because a write completes only once its
// bytes are placed (fast path; CMA/SAR after the target's answer) or sit in the target's FIFO
// command queue ahead of the envelope (inline/inject): the envelope never overtakes its data.
// Measured (duet bench transport --backends fabric+shm zmq+tcp; before 3 runs, after 4; the
// loaded 2-core VM; with the huge-page window below and the dispatching xxh3): 1 MiB 4.3-6.6
// -> 9.6-11.1 GB/s (memcpy 42.7-47.6, the CMA copy alone 28.7-31.7), 16 MiB 2.6-2.8 ->
// 12.5-14.9 GB/s (memcpy 21.6-23.7: 58-64%), 64 KiB p50 latency 113-161 -> 13.6-14.9 us.
// The window is a ring: the sender allocates contiguous regions in order (skipping the tail
// when a segment does not fit before the end, which costs that padding as credit too); the
// receiver frees in order. Where tail + segment exceed the window (window < 2x the segment),
// the sender waits for the ring to drain and sends a credit frame of its own {stream, tail
// bytes}: both sides skip the tail without charging it, then the segment goes at offset 0. Payload
// copies: the RMA write itself (by the NIC, CMA or the shm provider's bounce buffers), none by us
// on either side. Pipelining: send() returns once the write and its envelope are posted; the
// payload's owner is held until the write's local completion (and the envelope's, where it has
// one) is reaped (by later send()/flush() calls, or by the sender's progress thread while the
// user is idle: tcp;ofi_rxm, udp;ofi_rxd and shm SAR need the initiator's progress). Up to 64
// writes (and the receiver's window in bytes) may be in flight; flush() waits for all. Measured
// (duet bench transport, 1 MiB, same run, loaded 2-core machine): shm 1.37-1.48 -> 3.5-3.8 GB/s,
// tcp 0.37 -> 0.42-0.54 GB/s. FI_SHM_DISABLE_CMA=1 (SAR) measured slower here with pipelining
// (1.27-1.36 GB/s), so it is not forced.
//
// Tagged mode (providers without FI_RMA or with < 8 bytes of remote CQ data, or forced by
// options::fabric_payload = tagged; see transport.hpp): the endpoint opens without FI_RMA
// (automatic asks with it first and retries without), the window is registered for FI_RECV
// and its credit carries key 0, which tells the sender to use tagged messages (an automatic
// sender follows; one forced to rma, or without RMA facing an RMA window, fails its first
// send with backend_unavailable and sends the receiver an error frame, which the receiver's
// recv() returns: a mismatch is an error on both ends, never a hang).
//   sender              envelope {remote: offset, length} by the same ring rule and credit,
//                       then fi_tsend(payload, tag = 1<<63 | stream (31 bits) | sequence
//                       (32 bits)) straight from the caller's (registered, cached) buffer
//   receiver            on the envelope, takes the region from the ring (checking the ring
//                       rule and that it fits the credit granted) and posts fi_trecv into
//                       window + offset on that tag; at most 64 such receives are posted,
//                       later envelopes wait in order. When the receive completes, the same
//                       checks run on the bytes in place and the same in-place buffer is
//                       handed out (a payload longer than announced: FI_ETRUNC -> truncated)
// Payload copies in tagged mode: none by duet on either side; the provider's own — shm: one
// by the kernel (CMA) for large payloads, two through its inject/bounce buffers for small
// ones; tcp;ofi_rxm: the socket's, plus one through rxm's bounce buffers for eager-sized
// (small) messages and for payloads that arrive before their receive is posted.
// Measured (duet bench transport --backends fabric+shm fabric+shm/tagged fabric+tcp
// fabric+tcp/tagged --sizes 1048576 16777216, two runs on the loaded 2-core VM, GB/s, RMA vs
// tagged): shm 1 MiB 5.39/4.25 vs 5.31/4.32, 16 MiB 3.65/2.77 vs 4.02/1.37; tcp 1 MiB
// 0.90/3.50 vs 3.13/2.27, 16 MiB 1.32/0.77 vs 1.07/1.01 — the same order; the noise is the VM's.
// Bounds as in RMA mode: 64 payload sends in flight per sender and the window in bytes; a dead
// sender leaves the receiver's recv() with timeout (its posted receives are cancelled when the
// receiver closes), a dead receiver leaves the sender without credit: send() times out.
// verbs and efa are compiled into Debian's libfabric but find no device on this machine:
// opening them returns backend_unavailable naming the provider. udp (udp;ofi_rxd: libfabric's
// reliable-datagram layer over UDP sockets, RMA with 8 bytes of remote CQ data, completions
// unordered) stands in for them in the tests: a network provider that is neither tcp's
// stream nor shm's shared memory, as efa's RDM runs over datagrams. It is slow (0.1-0.2 GB/s
// here) and is no substitute for a run on the hardware.

#include "transport/arrival_checker.hpp"
#include "transport/backends.hpp"
#include "transport/sender_common.hpp"
#include "transport/shm_cleanup.hpp"

#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>
#include <rdma/fi_tagged.h>

#include <algorithm>
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

#include <sys/mman.h>
#include <unistd.h>

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
  if (flavor == "udp") return "udp;ofi_rxd";
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

/// The tag of a segment's payload message in tagged mode: the top bit keeps it apart from
/// ctrl_tag; 31 bits of the (random) stream id and 32 of the sequence name the segment, so a
/// receive posted for one segment matches nothing else (a duplicate carries the same tag and
/// the same bytes, and matches in order).
std::uint64_t payload_tag(std::uint64_t stream_id, std::uint64_t sequence) {
  return std::uint64_t{1} << 63 | (stream_id & 0x7fffffffu) << 32 | (sequence & 0xffffffffu);
}

/// One operation with a completion: fi_context2 first, as FI_CONTEXT2 mode requires.
struct fabric_op {
  fi_context2 ctx{};
  enum kind_t {
    ctrl_recv,    ///< a posted control receive (index says which buffer)
    payload_send, ///< an RMA write or a tagged payload send
    ctrl_send,    ///< a control frame sent with a completion (fabric_endpoint::send_tracked)
    payload_recv, ///< tagged mode: a payload receive posted into the window
    discard_recv, ///< tagged mode: swallows the payload of an envelope that was rejected
  } kind = ctrl_recv;
  std::size_t index = 0; ///< ctrl_recv: which buffer
  bool done = false;
  int err = 0;
  std::size_t len = 0; ///< receives: bytes that arrived
};

/// Waiting for completions: spin briefly, then yield for 200 us (a peer thread or process is
/// usually about to answer), then sleep in short naps so a long idle wait does not burn a core
/// (2 shared cores here; a sleeping waiter must not starve its peer). The yield phase was 2 ms:
/// a decode node's KV pump then yield-spun through most of a prefill (segments arrive every
/// ~1 ms), taking CPU from the prefill itself. duet bench fabric -m stories15M-shaped f32
/// --transport fabric+shm --recoveries 0 --requests 30, quiet machine: TTFT disaggregated -
/// integrated p50 7.3-8.0 ms (3 runs) with 2 ms, 1.5-2.8 ms (9 runs) with 200 us; bench
/// transport fabric+shm unchanged (1 MiB 12.07 vs 11.91 GB/s, 16 MiB 12.29 vs 12.22).
class backoff {
public:
  void pause() {
    if (++spins_ < 2000) return;
    auto now = std::chrono::steady_clock::now();
    if (spins_ == 2000) idle_since_ = now;
    if (now - idle_since_ < std::chrono::microseconds(200))
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
  fabric_endpoint() = default;
  /// Takes o's objects (the posted receives' contexts and buffers are on the heap and stay
  /// where they are); o is left closed. For handing an endpoint to retire().
  fabric_endpoint(fabric_endpoint&& o) noexcept
      : flavor_(std::move(o.flavor_)), info_(std::exchange(o.info_, nullptr)),
        fabric_(std::exchange(o.fabric_, nullptr)), domain_(std::exchange(o.domain_, nullptr)),
        cq_(std::exchange(o.cq_, nullptr)), av_(std::exchange(o.av_, nullptr)),
        ep_(std::exchange(o.ep_, nullptr)), ctrl_mr_(std::exchange(o.ctrl_mr_, nullptr)),
        ctrl_(std::move(o.ctrl_)), ctrl_ops_(std::move(o.ctrl_ops_)), landed_(std::move(o.landed_)),
        rma_(o.rma_), local_name_(std::move(o.local_name_)),
        local_peers_(std::move(o.local_peers_)) {
    o.local_name_.clear();
    o.local_peers_.clear();
  }
  fabric_endpoint& operator=(fabric_endpoint&&) = delete;
  ~fabric_endpoint() { close(); }

  /// Opens for `mode`: automatic asks for FI_RMA (with 8 bytes of remote CQ data) and falls
  /// back to a tagged-only endpoint when the provider does not offer it; rma insists; tagged
  /// never asks. rma() says which one opened.
  result<void> open(const address& a, options::fabric_payload_mode mode) {
    using mode_t = options::fabric_payload_mode;
    flavor_ = a.flavor;
    if (flavor_ == "shm") {
      // Once per process, before its first shm endpoint (see shm_cleanup.hpp).
      static std::once_flag cleaned;
      std::call_once(cleaned, [] { remove_stale_shm_regions(); });
    }
    std::string node, service;
    if (!a.location.empty()) {
      auto colon = a.location.rfind(':');
      node = a.location.substr(0, colon);
      if (colon != std::string::npos) service = a.location.substr(colon + 1);
      if (service == "0") service.clear();
    }
    int rc = -FI_ENODATA;
    std::string no_rma; // why RMA was not taken (for the forced-rma error)
    if (mode != mode_t::tagged) {
      rc = get_info(node, service, FI_RMA);
      if (rc == 0 && ((info_->caps & FI_RMA) == 0 || info_->domain_attr->cq_data_size < 8)) {
        no_rma = "it offers FI_RMA with only " + std::to_string(info_->domain_attr->cq_data_size) +
                 " bytes of remote CQ data";
        fi_freeinfo(info_);
        info_ = nullptr;
        rc = -FI_ENODATA;
      } else if (rc != 0) {
        no_rma = "fi_getinfo with FI_RMA: " + fi_error(rc);
      }
      rma_ = rc == 0;
    }
    if (rc != 0) {
      rc = get_info(node, service, 0); // the tagged-message endpoint
      if (rc != 0)
        return fail(errc::backend_unavailable,
                    "fabric+" + a.flavor + ": libfabric provider '" + provider_name(a.flavor) +
                        "' is not available here (fi_getinfo: " + fi_error(rc) +
                        "); it needs its hardware (verbs: an RDMA NIC, efa: an AWS EFA device)");
      if (mode == mode_t::rma)
        return fail(errc::backend_unavailable,
                    "fabric+" + a.flavor + ": libfabric provider '" + provider_name(a.flavor) +
                        "' has no usable RMA (" + no_rma +
                        ") and options.fabric_payload = rma; use automatic or tagged");
    }
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
    if (flavor_ == "shm") {
      local_name_ = name();
      local_endpoints_add(local_name_);
    }
    return {};
  }

  /// fi_getinfo for an RDM endpoint of this provider with FI_TAGGED | FI_MSG | `extra_caps`;
  /// fills info_ on success.
  int get_info(const std::string& node, const std::string& service, std::uint64_t extra_caps) {
    fi_info* hints = fi_allocinfo();
    if (hints == nullptr) return -FI_ENOMEM;
    hints->ep_attr->type = FI_EP_RDM;
    hints->caps = FI_TAGGED | FI_MSG | extra_caps;
    hints->mode = FI_CONTEXT | FI_CONTEXT2;
    hints->domain_attr->mr_mode = FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY;
    hints->fabric_attr->prov_name = strdup(provider_name(flavor_));
    int rc = fi_getinfo(FI_VERSION(1, 17), node.empty() ? nullptr : node.c_str(),
                        service.empty() ? nullptr : service.c_str(), node.empty() ? 0 : FI_SOURCE,
                        hints, &info_);
    fi_freeinfo(hints);
    if (rc != 0) info_ = nullptr;
    return rc;
  }

  /// Closes the endpoint alone (cancelling its posted receives) so that the memory they
  /// point into may be deregistered before close() takes the domain down.
  void close_endpoint() {
    if (ep_ != nullptr) fi_close(&ep_->fid);
    ep_ = nullptr;
  }

  /// Closes everything. An shm endpoint goes through retire() instead while a peer of this
  /// process may still hold it; this is the last resort (an endpoint that never opened fully).
  void close() {
    if (!local_name_.empty()) local_endpoints_erase(std::exchange(local_name_, {}));
    close_endpoint();
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
    return post_control("fi_tinject", deadline,
                        [&] { return fi_tinject(ep_, bytes.data(), bytes.size(), to, ctrl_tag); });
  }

  /// Calls `post` (a control send) until the provider takes it, driving progress while its
  /// queue is full (-FI_EAGAIN), until the deadline.
  template <class Post>
  result<void> post_control(const char* what, std::chrono::steady_clock::time_point deadline,
                            Post&& post) {
    backoff wait;
    for (;;) {
      ssize_t rc = post();
      if (rc == 0) return {};
      if (rc != -FI_EAGAIN) return failed(what, static_cast<int>(rc));
      if (std::chrono::steady_clock::now() > deadline)
        return fail(errc::timeout, "fabric+" + flavor_ + ": control send stalled");
      drive();
      wait.pause();
    }
  }

  /// Whether control frames can go with a completion from unregistered memory: every provider
  /// but shm, unless it wants local buffers registered (FI_MR_LOCAL). An injected frame has no
  /// completion, and some providers still need this side's progress after fi_tinject returns
  /// to deliver it: udp;ofi_rxd retransmits a lost datagram from the initiator, tcp;ofi_rxm
  /// queues a frame that finds the socket full. A sender that then goes idle, or exits after
  /// flush(), could leave the frame undelivered (the likely cause of a CI failure of
  /// 2026-11-29: over udp, a receiver waited until its timeout for the last segment of a sender
  /// that had flushed and exited). shm places an inject in the peer's queue at once.
  bool tracks_frames() const {
    return flavor_ != "shm" && (info_->domain_attr->mr_mode & FI_MR_LOCAL) == 0;
  }

  /// Sends a control frame with a completion on `op` (tracks_frames providers): `bytes` and
  /// `op` must stay alive until op.done, which says the provider is done with the frame
  /// (udp;ofi_rxd: acknowledged by the peer). Drives progress while the queue is full.
  result<void> send_tracked(fi_addr_t to, std::span<const std::byte> bytes, fabric_op& op,
                            std::chrono::steady_clock::time_point deadline) {
    op.kind = fabric_op::ctrl_send;
    return post_control("fi_tsend", deadline, [&] {
      return fi_tsend(ep_, bytes.data(), bytes.size(), nullptr, to, ctrl_tag, &op.ctx);
    });
  }

  /// One attempt at a control send: false when the provider's queue is full (try later).
  result<bool> try_send_bytes(fi_addr_t to, std::span<const std::byte> bytes) {
    ssize_t rc = fi_tinject(ep_, bytes.data(), bytes.size(), to, ctrl_tag);
    if (rc == -FI_EAGAIN) return false;
    if (rc != 0) return failed("fi_tinject", static_cast<int>(rc));
    return true;
  }

  /// Reads completions: control frames go to on_ctrl(bytes), payload operations are marked
  /// done (receives with their length or error).
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
      if (op != nullptr &&
          (op->kind == fabric_op::payload_recv || op->kind == fabric_op::discard_recv)) {
        // A payload longer than its receive (FI_ETRUNC) or a cancelled one: the receiver
        // reports it for that segment, in order; the endpoint carries on.
        op->done = true;
        op->err = e.err;
        op->len = e.len;
        return 1;
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
        op->len = entries[i].len;
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

  /// Adds a peer to the address vector. A peer of this process (shm) is then held: it stays
  /// open until forget() lets it go (see local_endpoints).
  result<fi_addr_t> insert(const std::vector<std::byte>& name) {
    fi_addr_t addr = FI_ADDR_UNSPEC;
    int rc = fi_av_insert(av_, name.data(), 1, &addr, 0, nullptr);
    if (rc != 1) return fail(errc::bad_address, "fabric+" + flavor_ + ": fi_av_insert failed");
    if (flavor_ == "shm" && local_endpoints_hold(name)) local_peers_.push_back({name, addr});
    return addr;
  }

  /// Takes a peer out of the address vector (its stream is over) and lets go of it if it is
  /// a peer of this process, which may then close (on this thread).
  void forget(fi_addr_t addr) {
    if (av_ != nullptr) (void)fi_av_remove(av_, &addr, 1, 0);
    for (auto it = local_peers_.begin(); it != local_peers_.end();) {
      if (it->second != addr) {
        ++it;
        continue;
      }
      auto name = std::move(it->first);
      it = local_peers_.erase(it);
      local_endpoints_drop(name);
    }
  }

  /// forget() for every peer of this process: before this endpoint goes, while they are
  /// still there to be written to (removing an address-vector entry writes into the peer's
  /// memory).
  void forget_local_peers() {
    while (!local_peers_.empty()) forget(local_peers_.front().second);
  }

  /// This endpoint's name while it is one of this process's shm endpoints, else empty.
  const std::vector<std::byte>& local_name() const { return local_name_; }

  fid_ep* ep() { return ep_; }
  fid_domain* domain() { return domain_; }
  const std::string& flavor() const { return flavor_; }
  /// True when the endpoint opened with FI_RMA and 8 bytes of remote CQ data.
  bool rma() const { return rma_; }
  /// RMA writes that complete only once their bytes are placed (or queued ahead of anything
  /// sent after them): the envelope follows the write's completion and the write carries no
  /// remote CQ data. True for shm (see the header comment: it is what lets shm take its fast
  /// RMA path, the initiator's own CMA copy); every other provider signals landing with
  /// remote CQ data.
  bool placed_on_completion() const { return rma_ && flavor_ == "shm"; }

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
  bool rma_ = false;
  std::vector<std::byte> local_name_;
  /// Peers of this process in the address vector, each held once per insert.
  std::vector<std::pair<std::vector<std::byte>, fi_addr_t>> local_peers_;

  // The registry of this process's shm endpoints (local_endpoints, below).
  static void local_endpoints_add(const std::vector<std::byte>& name);
  static bool local_endpoints_hold(const std::vector<std::byte>& name);
  static void local_endpoints_drop(const std::vector<std::byte>& name);
  static void local_endpoints_erase(const std::vector<std::byte>& name);
};

/// What a sender or receiver leaves when it goes: its endpoint, the registrations a peer
/// writes through and the memory behind them (windows, the contexts of posted operations).
/// Closed in that order: the endpoint first (which cancels its posted operations), then the
/// registrations, then the rest of the endpoint; the memory last.
struct fabric_remains {
  explicit fabric_remains(fabric_endpoint&& e) : ep(std::move(e)) {}
  fabric_endpoint ep;
  std::vector<fid_mr*> mrs;
  std::vector<std::shared_ptr<void>> memory;

  ~fabric_remains() {
    ep.close_endpoint();
    for (auto* mr : mrs) fi_close(&mr->fid);
    ep.close();
  }
};

/// The shm endpoints of this process, and who holds whom.
///
/// libfabric's shm provider reaches a peer endpoint of the same process through that
/// endpoint's own shared-memory region (found by name in the process's list of endpoints), not
/// through a mapping of its own, as it does for another process's; and removing a peer from an
/// address vector writes into the peer's region. So an endpoint closed while another endpoint
/// of the process still has it in its address vector leaves that one a dangling region: its
/// next control frame to it, or its own close, touches freed memory. Found by
/// `duet chaos --transport fabric+shm --kill-prefill 6` (a SIGSEGV in pthread_spin_lock under
/// fi_tinject: a decode lane's receiver granting credit to a restarted shard's old sender) and
/// tests/transport/fabric_lifetime_test.cpp. Across processes each side maps the other's
/// region itself and that mapping outlives the peer, which is how a dead process looks.
///
/// So an endpoint that inserts a peer of this process holds it, until forget() (its stream
/// ends, or the endpoint itself goes); an endpoint whose owner is done (retire()) closes when
/// no one holds it, or else waits, with its windows, for the last holder to let go: written to
/// by peers that will time out, as a dead process's region would be. A retiring endpoint lets
/// go of its own peers first, so two endpoints that hold each other do not wait forever.
class local_endpoints {
public:
  using name_t = std::vector<std::byte>;

  /// Never destroyed: endpoints may still retire while statics are destroyed.
  static local_endpoints& get() {
    static auto* registry = new local_endpoints;
    return *registry;
  }

  void add(const name_t& name) {
    std::lock_guard lock(mu_);
    lives_[name];
  }

  /// True when `name` is an endpoint of this process: it is then held once more.
  bool hold(const name_t& name) {
    std::lock_guard lock(mu_);
    auto it = lives_.find(name);
    if (it == lives_.end()) return false;
    ++it->second.holders;
    return true;
  }

  /// Lets go of `name` once; returns its remains when it had retired and this was the last
  /// holder (the caller closes them, outside the lock).
  std::unique_ptr<fabric_remains> drop(const name_t& name) {
    std::lock_guard lock(mu_);
    auto it = lives_.find(name);
    if (it == lives_.end() || it->second.holders == 0) return nullptr;
    if (--it->second.holders > 0 || it->second.remains == nullptr) return nullptr;
    auto remains = std::move(it->second.remains);
    lives_.erase(it);
    return remains;
  }

  /// The owner of `name` is done with it: returns the remains to close now when no one holds
  /// it, else keeps them for the last holder's drop().
  std::unique_ptr<fabric_remains> retire(const name_t& name,
                                         std::unique_ptr<fabric_remains> remains) {
    std::lock_guard lock(mu_);
    auto it = lives_.find(name);
    if (it == lives_.end()) return remains;
    if (it->second.holders == 0) {
      lives_.erase(it);
      return remains;
    }
    it->second.remains = std::move(remains);
    return nullptr;
  }

  void erase(const name_t& name) {
    std::lock_guard lock(mu_);
    lives_.erase(name);
  }

private:
  struct life {
    std::size_t holders = 0;
    std::unique_ptr<fabric_remains> remains; ///< set once retired while held
  };
  std::mutex mu_;
  std::map<name_t, life> lives_;
};

void fabric_endpoint::local_endpoints_add(const std::vector<std::byte>& name) {
  local_endpoints::get().add(name);
}
bool fabric_endpoint::local_endpoints_hold(const std::vector<std::byte>& name) {
  return local_endpoints::get().hold(name);
}
void fabric_endpoint::local_endpoints_drop(const std::vector<std::byte>& name) {
  (void)local_endpoints::get().drop(name); // closed here, when it was the last holder
}
void fabric_endpoint::local_endpoints_erase(const std::vector<std::byte>& name) {
  local_endpoints::get().erase(name);
}

/// An owner is done with its endpoint: closes it now, or (shm, held by a peer of this
/// process) once the last holder lets go. `remains` must be complete: everything a peer may
/// still write into, and every operation context still posted.
void retire(std::unique_ptr<fabric_remains> remains) {
  remains->ep.forget_local_peers();
  if (remains->ep.local_name().empty()) return; // closes here
  const auto name = remains->ep.local_name();
  remains = local_endpoints::get().retire(name, std::move(remains));
}

// -- receiver ----------------------------------------------------------------------------------

/// A receive window: 2 MiB-aligned, advised onto transparent huge pages, faulted in now.
/// Faulting it in once per sender: a first RMA write into untouched pages (CMA, the kernel's
/// TCP receive path) was measured ~10x slower than into resident ones, and registered memory
/// is committed memory anyway (verbs/efa pin it). Huge pages: every CMA write pins the
/// window's pages (get_user_pages) before copying; measured here (process_vm_writev into a
/// ring, 1 MiB pieces) 13.8 GB/s into 4 KiB pages vs 29 GB/s into huge pages (16 MiB pieces,
/// 64 MiB ring: 4.5 vs 12-18 GB/s), and faulting in 64 MiB took 255 ms in 4 KiB pages (~13 us
/// a page fault on this VM) vs 18 ms. Where THP is off the advice is ignored (4 KiB pages).
void* allocate_window(std::size_t bytes) {
  constexpr std::size_t huge = std::size_t{2} << 20;
  const std::size_t rounded = (bytes + huge - 1) / huge * huge;
  void* mem = std::aligned_alloc(huge, rounded);
  if (mem == nullptr) return nullptr;
  (void)::madvise(mem, rounded, MADV_HUGEPAGE);
  std::memset(mem, 0, rounded);
  return mem;
}

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
  std::uint64_t freed_total = 0;   ///< virtual offset up to which the ring is free again

  void release(std::uint64_t start) {
    std::lock_guard lock(mu);
    for (auto& e : entries)
      if (e.start == start) e.released = true;
    while (!entries.empty() && entries.front().released) {
      grant_pending += entries.front().consumed;
      freed_total += entries.front().consumed;
      entries.pop_front();
    }
  }
};

struct fabric_stream {
  std::uint64_t id = 0;
  fi_addr_t peer = FI_ADDR_UNSPEC;
  bool ended = false;     ///< the sender said bye: freed (end_streams) once no arrival waits on it
  pid_t peer_pid = 0;     ///< shm: the sender's process (0: unknown, or this one)
  bool keepalive = false; ///< the sender says it lives while idle: silence ends the stream
  std::chrono::steady_clock::time_point last_heard{}; ///< its last frame
  std::uint64_t window_bytes = 0;
  std::uint64_t head = 0; ///< virtual offset of the next expected region
  bool tagged = false;    ///< payloads arrive as tagged messages (else RMA writes)
  /// Receipts go to its sender (every provider but shm, see fabric_receiver::taken): every
  /// segment below receipt_through was taken; receipt_sent is what the sender was last told.
  bool receipts = false;
  std::uint64_t receipt_through = 0, receipt_sent = 0;
  fid_mr* mr = nullptr;
  std::shared_ptr<fabric_ring> ring;
};

/// An envelope whose payload has not landed yet.
struct fabric_arrival {
  messages::kv_envelope env;
  /// Tagged mode: the region's virtual ring offset (allocated when the envelope arrived) and
  /// the receive posted into it (null until posted).
  std::uint64_t start = 0;
  std::unique_ptr<fabric_op> recv;
  std::shared_ptr<fabric_ring> ring; ///< tagged: the ring the region was taken from
};

class fabric_receiver final : public receiver {
public:
  explicit fabric_receiver(const options& opts) : opts_(opts), checker_(opts_) {}

  ~fabric_receiver() override {
    // The endpoint, the windows' registrations and memory, and the contexts of posted payload
    // receives (tagged): closed now, or once no sender of this process holds the endpoint.
    auto remains = std::make_unique<fabric_remains>(std::move(ep_));
    for (auto& [id, st] : streams_) {
      if (st.mr != nullptr) remains->mrs.push_back(st.mr);
      remains->memory.push_back(st.ring);
    }
    remains->memory.push_back(std::make_shared<decltype(waiting_)>(std::move(waiting_)));
    remains->memory.push_back(std::make_shared<decltype(discards_)>(std::move(discards_)));
    retire(std::move(remains));
  }

  result<void> open(const transport::address& at) {
    if (auto r = ep_.open(at, opts_.fabric_payload); !r) return r;
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
      send_receipts();
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
      discards_.remove_if([](const fabric_op& op) { return op.done; });
      drain_waiting();
      end_streams();
      if (auto r = post_receives(); !r) return r.err();
      idle = *n == 0;
      if (!idle) {
        wait.reset();
        continue;
      }
      check_senders(); // idle: every frame that came is read, so silence is real
      if (std::chrono::steady_clock::now() >= deadline)
        return fail(errc::timeout, address_ + ": nothing arrived within " +
                                       std::to_string(timeout.count()) + " ms");
      wait.pause();
    }
  }

  const counters& stats() const override { return stats_; }

private:
  /// Tagged mode: payload receives kept posted at most (the window bounds their bytes; the
  /// count bounds the provider's posted-receive queue and our bookkeeping; 64 matches the
  /// sender's sends in flight). Envelopes beyond it wait, in order, for a slot.
  static constexpr std::size_t payload_recvs_max = 64;

  /// Returns freed window bytes to their senders: batched (a quarter window at a time) while
  /// completions keep coming, everything once idle (`all`).
  result<void> send_grants(std::chrono::steady_clock::time_point deadline, bool all) {
    for (auto& [id, st] : streams_) {
      if (st.ended) continue; // its sender has gone
      std::uint64_t grant;
      {
        std::lock_guard lock(st.ring->mu);
        if (st.ring->grant_pending == 0 || (!all && st.ring->grant_pending < st.window_bytes / 4))
          continue;
        grant = std::exchange(st.ring->grant_pending, 0);
      }
      // shm: not into the region of a sender whose process has gone (a sender killed inside
      // its progress leaves its region's lock taken: see fabric_sender::check_receiver).
      if (st.peer_pid > 0 && !process_running(st.peer_pid)) continue;
      if (auto r = ep_.send_ctrl(st.peer, messages::credit_grant{id, grant, 0, 0, 0, 0}, deadline);
          !r)
        return r;
    }
    return {};
  }

  /// Segment `sequence` of stream `st` was taken: its bytes came and were checked, whatever
  /// the verdict. Over every provider but shm a sender's completion does not say that its
  /// bytes arrived (tcp;ofi_rxm completes a write once it is in the kernel's socket buffer, and
  /// a process that exits with unread bytes in its own receive queue has its connection reset,
  /// which drops what was not yet sent), so its flush() waits for this receipt, which
  /// send_receipts() sends from the next pass of recv(), before a segment is returned.
  void taken(fabric_stream& st, std::uint64_t sequence) {
    if (!st.receipts || sequence < st.receipt_through) return;
    st.receipt_through = sequence + 1;
    receipts_due_ = true;
  }

  /// Tells each sender which of its segments were taken since it was last told (one frame a
  /// stream). A send that fails or stalls for 100 ms is not retried: that sender's flush()
  /// then times out rather than hear a receipt it may not rely on.
  void send_receipts() {
    if (!std::exchange(receipts_due_, false)) return;
    for (auto& [id, st] : streams_) {
      if (st.receipt_through == st.receipt_sent || st.ended) continue;
      st.receipt_sent = st.receipt_through;
      (void)ep_.send_ctrl(st.peer,
                          messages::credit_grant{id, 0, 0, 0, 0, 0, 0, false, st.receipt_through},
                          std::chrono::steady_clock::now() + std::chrono::milliseconds(100));
    }
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
    if (auto* alive = std::get_if<messages::stream_alive>(&*frame)) {
      heard(alive->stream_id);
      return error{errc::ok, {}};
    }
    if (auto* bye = std::get_if<messages::stream_bye>(&*frame)) {
      auto it = streams_.find(bye->stream_id);
      if (it != streams_.end() && !it->second.ended) { // freed once nothing waits on it
        it->second.ended = true;
        ++ended_;
      }
      return error{errc::ok, {}};
    }
    if (auto* e = std::get_if<messages::error_info>(&*frame)) {
      // A sender that cannot use this stream (its payload mode differs from ours) says why.
      const errc code =
          e->code > 0 && e->code < errc_count ? static_cast<errc>(e->code) : errc::internal;
      return fail(code, address_ + ": the sender reports: " + e->context);
    }
    if (auto* skip = std::get_if<messages::credit_grant>(&*frame)) {
      heard(skip->stream_id);
      return on_skip(*skip);
    }
    auto* env = std::get_if<messages::kv_envelope>(&*frame);
    if (env == nullptr)
      return arrival_checker::reject(stats_, errc::malformed, address_ + ": unexpected frame kind");
    heard(env->stream_id);
    if (!ep_.rma()) return on_tagged_envelope(std::move(*env));
    // shm: the sender sent the envelope after its write completed: the bytes are in place.
    if (ep_.placed_on_completion()) return on_segment(*env);
    // The envelope may overtake its RMA write: it waits for the write's token.
    waiting_.push_back({std::move(*env), 0, nullptr, nullptr});
    return error{errc::ok, {}};
  }

  /// Ends the streams of senders that died without a goodbye (SIGKILL, a crash, a lost host),
  /// whose windows would otherwise stay until this receiver closes, one per dead sender (a
  /// node process that dies and rejoins, again and again). shm: the sender's process is gone
  /// (one kill(pid, 0) per stream). Other providers: the sender, which says it lives every
  /// quarter of options.stream_silence_ms while idle, has said nothing for that long; it is
  /// told (an error frame), so that a sender that was only stalled fails its next send and
  /// reconnects: a write into the closed registration completed at a tcp sender as if
  /// delivered. Not shm: there the sender copies into the window's memory itself, which a live
  /// sender must never find freed. Checked at most every 500 ms, when idle.
  void check_senders() {
    const auto now = std::chrono::steady_clock::now();
    if (now < next_sender_check_) return;
    next_sender_check_ = now + std::chrono::milliseconds(500);
    const auto silence = std::chrono::milliseconds(opts_.stream_silence_ms);
    for (auto& [id, st] : streams_) {
      if (st.ended) continue;
      const bool gone = st.peer_pid > 0 && !process_running(st.peer_pid);
      const bool silent = st.peer_pid == 0 && st.keepalive && now - st.last_heard > silence;
      if (!gone && !silent) continue;
      if (silent) // in case it was only stalled: its next send() fails with this, and it reconnects
        (void)ep_.try_send_bytes(
            st.peer, messages::encode_frame(messages::error_info{
                         static_cast<std::uint16_t>(errc::timeout),
                         "stream " + std::to_string(id) + " ended: its sender said nothing for " +
                             std::to_string(opts_.stream_silence_ms) + " ms"}));
      st.ended = true;
      ++ended_;
    }
  }

  /// A frame of stream `id` came: its sender lives.
  void heard(std::uint64_t id) {
    if (auto it = streams_.find(id); it != streams_.end())
      it->second.last_heard = std::chrono::steady_clock::now();
  }

  /// Frees the streams whose senders said bye once no arrival waits on them: a lane whose
  /// senders come and go (restarted shards, reconnects) keeps one window and one address per
  /// live sender, not one per sender it ever had (libfabric 1.17's shm address vector holds
  /// 256).
  void end_streams() {
    for (auto it = streams_.begin(); ended_ > 0 && it != streams_.end();) {
      const auto id = it->first;
      const bool waited_on = std::any_of(waiting_.begin(), waiting_.end(),
                                         [&](const auto& a) { return a.env.stream_id == id; });
      if (it->second.ended && !waited_on)
        it = free_stream(it);
      else
        ++it;
    }
  }

  /// Drops a stream: its registration, its window (once the buffers handed out are released),
  /// and its sender's address unless another stream still uses it.
  std::map<std::uint64_t, fabric_stream>::iterator
  free_stream(std::map<std::uint64_t, fabric_stream>::iterator it) {
    if (it->second.mr != nullptr) fi_close(&it->second.mr->fid);
    if (it->second.ended) --ended_;
    const fi_addr_t peer = it->second.peer;
    checker_.forget_stream(it->first);
    it = streams_.erase(it);
    stats_.streams_open.store(streams_.size(), std::memory_order_relaxed);
    const bool shared = std::any_of(streams_.begin(), streams_.end(),
                                    [&](const auto& other) { return other.second.peer == peer; });
    if (!shared) ep_.forget(peer);
    return it;
  }

  /// The stream a frame names, or a malformed rejection (`what` for the context).
  result<fabric_stream*> stream_of(std::uint64_t id, const char* what) {
    auto it = streams_.find(id);
    if (it == streams_.end())
      return arrival_checker::reject(stats_, errc::malformed,
                                     address_ + ": " + what + " for unknown stream " +
                                         std::to_string(id));
    return &it->second;
  }

  /// A sender's credit frame skips the ring's tail: it may only come when the ring is empty
  /// (the sender had every byte of credit back) and must reach exactly the window's end.
  result<segment> on_skip(const messages::credit_grant& skip) {
    auto found = stream_of(skip.stream_id, "ring skip");
    if (!found) return found.err();
    auto& st = **found;
    std::lock_guard lock(st.ring->mu);
    if (st.head != st.ring->freed_total ||
        st.head % st.window_bytes + skip.grant_bytes != st.window_bytes)
      return arrival_checker::reject(
          stats_, errc::malformed,
          address_ + ": ring skip of " + std::to_string(skip.grant_bytes) + " bytes at " +
              std::to_string(st.head % st.window_bytes) + " breaks the ring");
    st.head += skip.grant_bytes;
    st.ring->freed_total += skip.grant_bytes;
    return error{errc::ok, {}};
  }

  /// Tagged mode: the envelope comes first; its region is taken from the ring now and a
  /// receive is posted into it (post_receives) on the segment's payload tag.
  result<segment> on_tagged_envelope(messages::kv_envelope env) {
    auto found = stream_of(env.stream_id, "segment");
    if (!found) {
      discard(env);
      return found.err();
    }
    auto start = take_region(**found, env);
    if (!start) {
      taken(**found, env.sequence);
      discard(env);
      return start.err();
    }
    waiting_.push_back({std::move(env), *start, nullptr, (*found)->ring});
    return error{errc::ok, {}};
  }

  /// Swallows the payload message of a rejected envelope (a zero-length receive on its tag
  /// completes with FI_ETRUNC), so its sender's send completes instead of hanging.
  void discard(const messages::kv_envelope& env) {
    if (env.placement != messages::payload_placement::remote_region) return;
    auto& op = discards_.emplace_back();
    op.kind = fabric_op::discard_recv;
    ssize_t rc = fi_trecv(ep_.ep(), nullptr, 0, nullptr, FI_ADDR_UNSPEC,
                          payload_tag(env.stream_id, env.sequence), 0, &op.ctx);
    if (rc != 0) discards_.pop_back(); // best effort: the sender's flush then times out
  }

  /// Posts payload receives for waiting envelopes, in order, up to payload_recvs_max. The
  /// posted ones are always a prefix of waiting_ (posted_ long).
  result<void> post_receives() {
    if (ep_.rma()) return {};
    while (posted_ < waiting_.size() && posted_ < payload_recvs_max) {
      auto& a = waiting_[posted_];
      auto it = streams_.find(a.env.stream_id);
      a.recv = std::make_unique<fabric_op>();
      a.recv->kind = fabric_op::payload_recv;
      if (it == streams_.end() || it->second.ring != a.ring) { // the stream was replaced
        a.recv->done = true;
        a.recv->err = FI_ECANCELED;
        ++posted_;
        continue;
      }
      auto& st = it->second;
      ssize_t rc = fi_trecv(ep_.ep(), st.ring->memory.get() + a.env.remote_offset,
                            a.env.remote_length, ep_.desc(st.mr), FI_ADDR_UNSPEC,
                            payload_tag(a.env.stream_id, a.env.sequence), 0, &a.recv->ctx);
      if (rc == -FI_EAGAIN) { // the provider's queue is full: try again on the next pass
        a.recv.reset();
        return {};
      }
      if (rc != 0) {
        a.recv->done = true;
        a.recv->err = static_cast<int>(-rc);
      }
      ++posted_;
    }
    return {};
  }

  /// Hands out envelopes whose payloads have landed, in arrival order.
  void drain_waiting() {
    while (!waiting_.empty()) {
      auto& front = waiting_.front();
      if (ep_.rma()) {
        auto& landed = ep_.landed();
        auto tok = landed.find(write_token(front.env.stream_id, front.env.sequence));
        if (tok == landed.end()) return;
        landed.erase(tok);
      } else {
        if (front.recv == nullptr || !front.recv->done) return;
        --posted_;
      }
      auto a = std::move(front);
      waiting_.pop_front();
      auto r = ep_.rma() ? on_segment(a.env) : on_tagged_landed(a);
      if (r.ok() || r.code() != errc::ok) ready_.push_back(std::move(r));
    }
  }

  /// Where the sender must have put a region of `env`, by the ring rule (contiguous, in
  /// order, the tail skipped when the region does not fit before the end) and within the
  /// credit granted; takes it from the ring. Returns its virtual start.
  result<std::uint64_t> take_region(fabric_stream& st, const messages::kv_envelope& env) {
    if (env.placement != messages::payload_placement::remote_region)
      return arrival_checker::reject(stats_, errc::malformed,
                                     address_ + ": fabric segments name their window region");
    const std::uint64_t w = st.window_bytes, len = env.remote_length;
    const std::uint64_t pos = st.head % w;
    std::uint64_t pad = 0;
    if (env.remote_offset == pos && pos + len <= w) {
      pad = 0;
    } else if (env.remote_offset == 0 && pos + len > w) {
      pad = w - pos;
    } else {
      return arrival_checker::reject(stats_, errc::malformed,
                                     address_ + ": remote region at " +
                                         std::to_string(env.remote_offset) +
                                         " breaks the ring (expected " + std::to_string(pos) + ")");
    }
    const std::uint64_t start = st.head;
    {
      std::lock_guard lock(st.ring->mu);
      if (start + pad + len - st.ring->freed_total > w)
        return arrival_checker::reject(stats_, errc::oversized,
                                       address_ + ": a region of " + std::to_string(pad + len) +
                                           " bytes exceeds the credit granted (" +
                                           std::to_string(w - (start - st.ring->freed_total)) +
                                           " bytes free)");
      st.ring->entries.push_back({start, pad + len, false});
    }
    st.head += pad + len;
    return start;
  }

  /// A buffer over `len` bytes of the window at `offset` whose release frees the ring region
  /// that starts at virtual offset `start`.
  static buffer window_buffer(const std::shared_ptr<fabric_ring>& ring, std::uint64_t start,
                              std::uint64_t offset, std::size_t len) {
    std::byte* data = ring->memory.get() + offset;
    std::shared_ptr<void> owner(data, [ring, start](void*) { ring->release(start); });
    return buffer::share(std::move(owner), data, len);
  }

  /// RMA mode: the write has landed; take its region and check the bytes in place.
  result<segment> on_segment(const messages::kv_envelope& env) {
    auto found = stream_of(env.stream_id, "segment");
    if (!found) return found.err();
    auto& st = **found;
    taken(st, env.sequence);
    auto start = take_region(st, env);
    if (!start) return start.err();
    buffer payload = window_buffer(st.ring, *start, env.remote_offset, env.remote_length);
    auto ok = checker_.check(env.stream_id, env, payload.bytes(), stats_);
    if (!ok) return ok.err();
    return segment{env.header, std::move(payload)};
  }

  /// Tagged mode: the payload receive completed; check the bytes in place.
  result<segment> on_tagged_landed(const fabric_arrival& a) {
    const auto& env = a.env;
    if (auto it = streams_.find(env.stream_id); it != streams_.end())
      taken(it->second, env.sequence);
    // The buffer frees the region whatever the verdict (dropping it returns the credit).
    const std::size_t len = a.recv->err == 0 ? a.recv->len : env.remote_length;
    buffer payload = window_buffer(a.ring, a.start, env.remote_offset, len);
    if (a.recv->err == FI_ETRUNC)
      return arrival_checker::reject(stats_, errc::truncated,
                                     address_ + ": the payload message is longer than the " +
                                         std::to_string(env.remote_length) +
                                         " bytes its envelope announced");
    if (a.recv->err != 0)
      return arrival_checker::reject(
          stats_, errc::peer_dead, address_ + ": payload receive failed: " + fi_error(a.recv->err));
    auto ok = checker_.check(env.stream_id, env, payload.bytes(), stats_);
    if (!ok) return ok.err();
    return segment{env.header, std::move(payload)};
  }

  result<segment> on_hello(const messages::stream_hello& hello) {
    // A hello again for a stream (the sender's first one went unanswered): the old one goes
    // first, with its address, which the insert below adds back.
    if (auto old = streams_.find(hello.stream_id); old != streams_.end()) free_stream(old);
    auto peer = ep_.insert(hello.endpoint_name);
    if (!peer) return arrival_checker::reject(stats_, errc::malformed, peer.err().context);
    if (streams_.size() >= opts_.streams_max) {
      // Each stream registers a window: refuse, and tell the sender (its first send fails).
      const std::string why = address_ + " holds " + std::to_string(streams_.size()) +
                              " streams (options.streams_max): refused stream " +
                              std::to_string(hello.stream_id);
      (void)ep_.send_ctrl(*peer,
                          messages::error_info{static_cast<std::uint16_t>(errc::oversized), why},
                          std::chrono::steady_clock::now() + std::chrono::milliseconds(100));
      ep_.forget(*peer);
      return arrival_checker::reject(stats_, errc::oversized, why);
    }
    fabric_stream st;
    st.id = hello.stream_id;
    st.peer = *peer;
    st.window_bytes = opts_.window_bytes;
    st.tagged = !ep_.rma();
    st.receipts = ep_.flavor() != "shm"; // shm completes a write once its bytes are placed
    if (ep_.flavor() == "shm") {
      st.peer_pid = shm_endpoint_pid(hello.endpoint_name);
      if (st.peer_pid == ::getpid()) st.peer_pid = 0; // its bye comes from its destructor
    } else {
      st.keepalive = hello.protocol_version >= 2 && opts_.stream_silence_ms > 0;
    }
    st.last_heard = std::chrono::steady_clock::now();
    const std::uint32_t keepalive_ms = st.keepalive ? std::max(1u, opts_.stream_silence_ms / 4) : 0;
    st.ring = std::make_shared<fabric_ring>();
    void* mem = allocate_window(opts_.window_bytes);
    if (mem == nullptr) return fail(errc::internal, address_ + ": cannot allocate the window");
    st.ring->memory = std::shared_ptr<std::byte>(static_cast<std::byte*>(mem),
                                                 [](std::byte* p) { std::free(p); });
    // RMA: the sender writes with our key, and key 0 tells it "tagged" (Credit.windowKey),
    // so a provider key of 0 is traded for another. Tagged: we receive into it ourselves.
    if (auto r = ep_.reg(mem, opts_.window_bytes, st.tagged ? FI_RECV : FI_REMOTE_WRITE, &st.mr);
        !r)
      return r.err();
    if (!st.tagged && fi_mr_key(st.mr) == 0) {
      fid_mr* zero = st.mr;
      auto r = ep_.reg(mem, opts_.window_bytes, FI_REMOTE_WRITE, &st.mr);
      fi_close(&zero->fid);
      if (!r) return r.err();
      if (fi_mr_key(st.mr) == 0) {
        fi_close(&st.mr->fid);
        return fail(errc::internal, address_ + ": the provider keeps giving RMA key 0");
      }
    }
    const std::uint64_t addr =
        !st.tagged && ep_.virt_addr() ? reinterpret_cast<std::uint64_t>(mem) : 0;
    const std::uint64_t key = st.tagged ? 0 : fi_mr_key(st.mr);
    checker_.forget_stream(st.id);
    auto id = st.id;
    auto to = st.peer;
    const bool receipts = st.receipts;
    streams_.emplace(id, std::move(st));
    stats_.streams_open.store(streams_.size(), std::memory_order_relaxed);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    if (auto r = ep_.send_ctrl(to,
                               messages::credit_grant{id, opts_.window_bytes, opts_.window_bytes,
                                                      opts_.segment_bytes_max, addr, key,
                                                      keepalive_ms, receipts},
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
  std::size_t ended_ = 0;     ///< streams whose senders said bye, not yet freed
  bool receipts_due_ = false; ///< some stream took segments its sender has not been told of
  std::chrono::steady_clock::time_point next_sender_check_{};
  /// Arrivals already read from the CQ (one poll may complete several), in order.
  std::deque<result<segment>> ready_;
  /// Envelopes whose payload has not been seen landing yet, in arrival order.
  std::deque<fabric_arrival> waiting_;
  std::size_t posted_ = 0;        ///< tagged: waiting_'s first posted_ entries have receives posted
  std::list<fabric_op> discards_; ///< tagged: receives swallowing rejected payloads
};

// -- sender ------------------------------------------------------------------------------------

/// A payload in flight (an RMA write or a tagged send): kept alive (and registered) until the
/// provider reports it done with the bytes.
struct fabric_write {
  fabric_op op;
  bool posted = false; ///< the provider has the operation (its context must stay alive)
  std::shared_ptr<void> owner;
  std::vector<std::byte> envelope;
  /// The envelope goes out when the write completes (placed_on_completion providers).
  bool envelope_pending = false;
  /// The envelope went with a completion (fabric_endpoint::tracks_frames): the provider holds
  /// envelope_op's context and the envelope's bytes until it completes.
  fabric_op envelope_op;
  bool envelope_posted = false;

  /// Every operation posted for this segment has completed.
  bool done() const { return (!posted || op.done) && (!envelope_posted || envelope_op.done); }
  /// The first error of its operations (0: none).
  int err() const { return op.err != 0 ? op.err : envelope_op.err; }
};

class fabric_sender final : public sender {
public:
  explicit fabric_sender(const options& opts) : opts_(opts) {}

  ~fabric_sender() override {
    // A sender whose send() failed (its receiver dead, silent or refusing) has nothing left to
    // wait for; otherwise the receipts may take as long as the receiver's user takes to call
    // recv(), but a receiver that has died sends none: give up after 200 ms without one.
    if (!failed_)
      (void)flush_until(std::chrono::milliseconds(1000), std::chrono::milliseconds(200));
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    wake_.notify_all();
    if (progress_.joinable()) progress_.join();
    auto bye = std::make_shared<fabric_write>(); // its envelope is the goodbye
    if (peer_ != FI_ADDR_UNSPEC && check_receiver()) say_goodbye(*bye);
    // The endpoint, the payload registrations, and the writes still in flight (their contexts
    // and payloads): closed now, or once the receiver, when it is of this process, lets go.
    auto remains = std::make_unique<fabric_remains>(std::move(ep_));
    remains->memory.push_back(bye);
    for (auto& c : mr_cache_) {
      remains->mrs.push_back(c.mr);
      remains->memory.push_back(c.owner);
    }
    mr_cache_.clear();
    remains->memory.push_back(std::make_shared<decltype(writes_)>(std::move(writes_)));
    retire(std::move(remains));
  }

  result<void> open(const transport::address& to) {
    if (to.fabric_name_hex.empty())
      return fail(errc::bad_address, to.to_string() + ": a fabric sender needs the receiver's "
                                                      "concrete address (with ?name=)");
    transport::address local = to;
    local.fabric_name_hex.clear();
    if (auto r = ep_.open(local, opts_.fabric_payload); !r) return r;
    const auto peer_name = from_hex(to.fabric_name_hex);
    auto peer = ep_.insert(peer_name);
    if (!peer) return peer.err();
    peer_ = *peer;
    peer_pid_ = shm_endpoint_pid(peer_name);
    if (peer_pid_ == ::getpid()) peer_pid_ = 0; // this process: alive while it runs this
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
    auto r = send_segment(std::move(seg), timeout);
    failed_ |= !r.ok();
    return r;
  }

  result<void> flush(milliseconds timeout) override { return flush_until(timeout, timeout); }

  std::size_t in_flight_bytes() const override {
    std::lock_guard lock(mu_);
    return window_ - credit_;
  }
  const counters& stats() const override { return stats_; }

private:
  result<void> send_segment(segment seg, milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    call_guard call(*this);
    if (auto r = take_deferred(); !r) return r;
    if (auto r = check_receiver(); !r) return r;
    // A receiver that asked for keepalives may have ended this stream after a silence (a
    // stall): read its control frames before posting, so the refusal comes now, not after one
    // more segment into a closed window. (Without keepalives nothing ends a live stream.)
    if (keepalive_.count() > 0)
      if (auto r = pump_once(); !r) return r;
    if (refused_.code != errc::ok) return refused_;
    while (window_ == 0) {
      if (refused_.code != errc::ok) return refused_;
      if (auto r = pump(deadline); !r)
        return fail(r.code(), name_ + ": the receiver did not answer within " +
                                  std::to_string(timeout.count()) + " ms (" + r.err().context +
                                  ")");
    }
    if (!mismatch_.empty()) return refuse_mismatch(deadline);
    options limits = opts_;
    limits.segment_bytes_max = std::min<std::size_t>(opts_.segment_bytes_max, receiver_max_);
    if (auto ok = prepare_segment(seg, limits, window_); !ok) return ok;
    auto f = apply_faults(faults_, seg);
    if (f.skip_sequence) ++sequence_;
    const int copies = f.duplicate ? 2 : 1;
    const std::size_t n = seg.payload.size();
    std::byte* data = seg.payload.data();
    auto owner = seg.payload.release_owner();
    auto desc = register_payload(owner, data, n, tagged_ ? FI_SEND : FI_WRITE);
    if (!desc) return desc.err();
    const std::uint64_t sequence = sequence_;
    for (int i = 0; i < copies; ++i) {
      // Ring allocation: contiguous, in order, skipping the tail when it does not fit.
      std::uint64_t pos = head_ % window_;
      std::uint64_t pad = pos + n > window_ ? window_ - pos : 0;
      if (pad + n > window_) {
        // The tail and the segment together exceed the window (a segment larger than the
        // ring's position, in a window smaller than twice it): no credit could ever cover
        // both. Once the ring is empty, skip the tail on its own (a credit frame from the
        // sender: the receiver moves its head to the wrap point, charging nothing).
        while (credit_ < window_)
          if (auto r = pump(deadline); !r)
            return fail(r.code(), name_ + ": the ring did not drain for a " + std::to_string(n) +
                                      "-byte segment within " + std::to_string(timeout.count()) +
                                      " ms (" + std::to_string(window_ - credit_) +
                                      " bytes unreleased)");
        if (auto r =
                ep_.send_ctrl(peer_, messages::credit_grant{stream_id_, pad, 0, 0, 0, 0}, deadline);
            !r)
          return r;
        head_ += pad;
        pos = 0;
        pad = 0;
      }
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
      w->op.kind = fabric_op::payload_send;
      w->owner = owner;
      messages::kv_envelope e;
      e.header = seg.header;
      e.sequence = sequence;
      e.stream_id = stream_id_;
      e.placement = messages::payload_placement::remote_region;
      e.remote_offset = offset;
      e.remote_length = n;
      w->envelope = messages::encode_frame(e);
      auto posted = tagged_ ? post_tagged(*w, data, n, *desc, sequence, deadline)
                            : post_write(*w, data, n, *desc, offset, sequence, deadline);
      if (w->posted || w->envelope_posted) writes_.push_back(std::move(w)); // contexts held
      if (!posted) return posted;
    }
    sequence_ = sequence + 1;
    last_said_ = std::chrono::steady_clock::now(); // its envelope goes now or on completion
    stats_.segments_sent.fetch_add(1, std::memory_order_relaxed);
    stats_.bytes_sent.fetch_add(n, std::memory_order_relaxed);
    // The write stays in flight (its payload owner is held in writes_ until the completion is
    // reaped): later calls and, between calls, the progress thread drive it to completion.
    // Reap whatever has already completed, so finished payloads go back early.
    if (auto r = pump_once(); !r) return r;
    if (!writes_.empty()) wake_.notify_one();
    return {};
  }

  /// flush(): the completions within `timeout`, then the receipts, giving up also once
  /// `patience` passes without a new one.
  result<void> flush_until(milliseconds timeout, milliseconds patience) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    call_guard call(*this);
    if (auto r = take_deferred(); !r) return r;
    backoff wait;
    while (!writes_.empty()) {
      if (auto r = pump_once(); !r) return r;
      if (writes_.empty()) break;
      if (std::chrono::steady_clock::now() > deadline)
        return fail(errc::timeout, name_ + ": " + std::to_string(writes_.size()) +
                                       " payload transfers not completed within " +
                                       std::to_string(timeout.count()) + " ms");
      wait.pause();
    }
    // Where the receiver sends receipts (every provider but shm), a completion did not say the
    // bytes arrived: wait until it has taken every segment (fabric_receiver::taken).
    auto heard_at = std::chrono::steady_clock::now();
    auto heard = receipt_through_;
    while (receipts_ && receipt_through_ < sequence_) {
      if (auto r = pump_once(); !r) return r;
      if (refused_.code != errc::ok) return refused_;
      if (receipt_through_ >= sequence_) break;
      const auto now = std::chrono::steady_clock::now();
      if (receipt_through_ != heard) {
        heard = receipt_through_;
        heard_at = now;
      }
      if (now > deadline || now - heard_at > patience)
        return fail(errc::timeout,
                    name_ + ": the receiver had not taken " +
                        std::to_string(sequence_ - receipt_through_) + " segment(s) " +
                        (now > deadline ? "within " + std::to_string(timeout.count()) + " ms"
                                        : "after " + std::to_string(patience.count()) +
                                              " ms without a receipt") +
                        " (a receiver takes them in recv())");
      wait.pause();
    }
    return {};
  }

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
                                       " payload transfers in flight, none completed in time");
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
        // Idle: asleep, but awake often enough to tell the receiver this sender lives.
        // (A first credit that asks for keepalives wakes it too: it may come and its write
        // complete inside one send(), with nothing left in flight to wake this thread.)
        const auto asked = keepalive_;
        const auto nap = asked.count() > 0 ? asked : std::chrono::milliseconds(60000);
        wake_.wait_for(lock, nap, [&] { return stop_ || !writes_.empty() || keepalive_ != asked; });
        if (!stop_ && writes_.empty() && keepalive_.count() > 0)
          if (auto r = pump_once(); !r && deferred_.code == errc::ok) deferred_ = r.err();
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

  /// RMA mode: the write into the window at `offset`, with remote CQ data naming (stream,
  /// sequence), then the envelope (the receiver holds it until the write's token lands).
  result<void> post_write(fabric_write& w, std::byte* data, std::size_t n, void* desc,
                          std::uint64_t offset, std::uint64_t sequence,
                          std::chrono::steady_clock::time_point deadline) {
    iovec iov{data, n};
    fi_rma_iov rma{window_address_ + offset, n, window_key_};
    fi_msg_rma msg{};
    msg.msg_iov = &iov;
    msg.desc = &desc;
    msg.iov_count = 1;
    msg.addr = peer_;
    msg.rma_iov = &rma;
    msg.rma_iov_count = 1;
    msg.context = &w.op.ctx;
    const bool after_completion = ep_.placed_on_completion();
    msg.data = after_completion ? 0 : write_token(stream_id_, sequence);
    const std::uint64_t flags =
        after_completion ? FI_COMPLETION : FI_COMPLETION | FI_REMOTE_CQ_DATA;
    backoff wait;
    for (;;) {
      ssize_t rc = fi_writemsg(ep_.ep(), &msg, flags);
      if (rc == 0) break;
      if (rc != -FI_EAGAIN) return ep_.failed("fi_writemsg", static_cast<int>(rc));
      if (std::chrono::steady_clock::now() > deadline)
        return fail(errc::timeout, name_ + ": provider queue full");
      if (auto r = pump_once(); !r) return r;
      wait.pause();
    }
    w.posted = true;
    if (after_completion) {
      w.envelope_pending = true; // pump_once sends it once the write completes, in order
      return {};
    }
    return send_envelope(w, deadline);
  }

  /// w's envelope: with a completion where the endpoint tracks frames (w is then done once
  /// both have completed, so flush() and the progress thread wait for the envelope too), else
  /// injected.
  result<void> send_envelope(fabric_write& w, std::chrono::steady_clock::time_point deadline) {
    if (!ep_.tracks_frames()) return ep_.send_bytes(peer_, w.envelope, deadline);
    if (auto r = ep_.send_tracked(peer_, w.envelope, w.envelope_op, deadline); !r) return r;
    w.envelope_posted = true;
    return {};
  }

  /// The stream's goodbye, from the destructor: where frames are tracked, waits up to 100 ms
  /// for the provider to be done with it (a lost goodbye leaves the receiver to end the stream
  /// after its silence bound). `bye` outlives the endpoint (the destructor keeps it).
  void say_goodbye(fabric_write& bye) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(100);
    bye.envelope = messages::encode_frame(messages::stream_bye{stream_id_});
    if (!send_envelope(bye, deadline) || !bye.envelope_posted) return;
    backoff wait;
    while (!bye.envelope_op.done && std::chrono::steady_clock::now() < deadline) {
      if (auto n = ep_.poll([](std::span<const std::byte>) {}); !n) return;
      wait.pause();
    }
  }

  /// Tagged mode: the envelope first (the receiver takes the region and posts a receive on
  /// the payload tag), then the payload straight from the caller's buffer on that tag. The
  /// provider holds a payload that overtakes its receive as unexpected (small ones copied
  /// into its bounce buffers, large ones by rendezvous: the data moves once matched).
  result<void> post_tagged(fabric_write& w, std::byte* data, std::size_t n, void* desc,
                           std::uint64_t sequence, std::chrono::steady_clock::time_point deadline) {
    if (auto r = send_envelope(w, deadline); !r) return r;
    backoff wait;
    for (;;) {
      ssize_t rc =
          fi_tsend(ep_.ep(), data, n, desc, peer_, payload_tag(stream_id_, sequence), &w.op.ctx);
      if (rc == 0) {
        w.posted = true;
        return {};
      }
      if (rc != -FI_EAGAIN) return ep_.failed("fi_tsend", static_cast<int>(rc));
      if (std::chrono::steady_clock::now() > deadline)
        return fail(errc::timeout, name_ + ": provider queue full");
      if (auto r = pump_once(); !r) return r;
      wait.pause();
    }
  }

  /// The receiver's stream runs in the other payload mode than this sender can or may use:
  /// tell the receiver once (its recv() reports it) and refuse.
  result<void> refuse_mismatch(std::chrono::steady_clock::time_point deadline) {
    if (!mismatch_told_) {
      mismatch_told_ = true;
      (void)ep_.send_ctrl(
          peer_,
          messages::error_info{static_cast<std::uint16_t>(errc::backend_unavailable), mismatch_},
          deadline);
    }
    return fail(errc::backend_unavailable, name_ + ": " + mismatch_);
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

  result<void*> register_payload(const std::shared_ptr<void>& owner, std::byte* data, std::size_t n,
                                 std::uint64_t access) {
    for (auto it = mr_cache_.begin(); it != mr_cache_.end(); ++it)
      if (it->owner == owner && it->data <= data && data + n <= it->data + it->size) {
        mr_cache_.splice(mr_cache_.begin(), mr_cache_, it);
        return ep_.desc(mr_cache_.front().mr);
      }
    fid_mr* mr = nullptr;
    if (auto r = ep_.reg(data, n, access, &mr); !r) return r.err();
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

  /// shm: nothing is sent to a receiver whose process has gone. libfabric 1.17's shm takes
  /// the receiver region's spin lock for every operation addressed to it, and a receiver killed
  /// while it held that lock (inside its own progress, which takes it too) leaves it taken for
  /// good: the next operation spins forever. Seen once: "a receiver killed while holding credit
  /// leaves the sender with a timeout" hung in the sender's goodbye (2026-11-29).
  /// The check (kill(pid, 0), a syscall: ~0.25 us here) runs at most once per
  /// receiver_check_interval: send() and the envelope pump_once sends after the write would
  /// otherwise each pay it for every segment. A receiver that dies within that interval of a
  /// passed check, holding its lock, can still leave the next operation spinning: 100 us
  /// against all the time after a death.
  result<void> check_receiver() {
    if (peer_pid_ <= 0) return {};
    const auto now = std::chrono::steady_clock::now();
    if (now - receiver_alive_at_ < receiver_check_interval) return {};
    if (!process_running(peer_pid_))
      return fail(errc::peer_dead,
                  name_ + ": the receiver's process " + std::to_string(peer_pid_) + " has exited");
    receiver_alive_at_ = now;
    return {};
  }

  result<void> try_hello() {
    if (hello_.empty()) return {};
    if (auto r = check_receiver(); !r) return r;
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
    if (auto r = keep_alive(); !r) return r;
    auto n = ep_.poll([&](std::span<const std::byte> bytes) {
      auto frame = messages::decode_frame(bytes, opts_.segment_bytes_max);
      if (!frame) return;
      if (auto* e = std::get_if<messages::error_info>(&*frame)) {
        // The receiver refuses this stream (too many streams, or it ended the stream after a
        // silence): every send fails with it.
        const errc code =
            e->code > 0 && e->code < errc_count ? static_cast<errc>(e->code) : errc::internal;
        refused_ = error{code, name_ + ": the receiver refuses the stream: " + e->context};
        return;
      }
      if (auto* c = std::get_if<messages::credit_grant>(&*frame)) {
        if (c->window_bytes != 0) {
          keepalive_ = std::chrono::milliseconds(c->keepalive_ms);
          wake_.notify_one(); // the progress thread naps no longer than keepalive_
          window_ = c->window_bytes;
          receiver_max_ = c->segment_bytes_max;
          window_address_ = c->window_address;
          window_key_ = c->window_key;
          receipts_ = c->receipts;
          choose_mode();
        }
        credit_ += c->grant_bytes;
        receipt_through_ = std::max(receipt_through_, c->receipt_through);
      }
    });
    if (!n) return n.err();
    while (!writes_.empty() && writes_.front()->done()) {
      auto& w = *writes_.front();
      if (w.err() != 0)
        return fail(errc::peer_dead, name_ +
                                         (w.op.err == 0 ? ": envelope send failed: "
                                          : tagged_     ? ": payload send failed: "
                                                        : ": RMA write failed: ") +
                                         fi_error(w.err()));
      if (w.envelope_pending) { // in order: a later write's envelope never overtakes this one
        if (auto r = check_receiver(); !r) return r;
        auto sent = ep_.try_send_bytes(peer_, w.envelope);
        if (!sent) return sent.err();
        if (!*sent) break; // the provider's queue is full: the next pass sends it
        w.envelope_pending = false;
      }
      writes_.pop_front(); // the provider is done with the payload: release it
    }
    return {};
  }

  /// Tells the receiver this sender lives when it has said nothing for keepalive_ (the
  /// receiver's first credit asks for it; it ends a silent stream as dead).
  result<void> keep_alive() {
    if (keepalive_.count() == 0 || window_ == 0) return {};
    const auto now = std::chrono::steady_clock::now();
    if (now - last_said_ < keepalive_) return {};
    auto sent =
        ep_.try_send_bytes(peer_, messages::encode_frame(messages::stream_alive{stream_id_}));
    if (!sent) return sent.err();
    if (*sent) last_said_ = now;
    return {};
  }

  /// The first credit says how the receiver takes payloads (window key 0: tagged messages,
  /// else RMA writes): follow it when this sender can and may.
  void choose_mode() {
    using mode_t = options::fabric_payload_mode;
    tagged_ = window_key_ == 0;
    const std::string theirs = tagged_ ? "tagged messages" : "RMA writes";
    if (tagged_ && opts_.fabric_payload == mode_t::rma)
      mismatch_ = "the receiver takes payloads as " + theirs +
                  " but this sender's options.fabric_payload is rma";
    else if (!tagged_ && opts_.fabric_payload == mode_t::tagged)
      mismatch_ = "the receiver takes payloads as " + theirs +
                  " but this sender's options.fabric_payload is tagged";
    else if (!tagged_ && !ep_.rma())
      mismatch_ = "the receiver takes payloads as " + theirs + " but provider '" +
                  provider_name(ep_.flavor()) + "' offers this sender no RMA";
  }

  /// Waits for at least one completion or control frame, until the deadline.
  result<void> pump(std::chrono::steady_clock::time_point deadline) {
    backoff wait;
    const auto credit_before = credit_;
    const auto window_before = window_;
    for (;;) {
      if (auto r = pump_once(); !r) return r;
      if (credit_ != credit_before || window_ != window_before || refused_.code != errc::ok)
        return {};
      if (std::chrono::steady_clock::now() >= deadline) return fail(errc::timeout, "timed out");
      wait.pause();
    }
  }

  options opts_;
  fabric_endpoint ep_;
  std::string name_;
  fi_addr_t peer_ = FI_ADDR_UNSPEC;
  pid_t peer_pid_ = 0; ///< shm: the receiver's process (0: unknown, or this one)
  /// When check_receiver last found it running (written under mu_, by user calls and the
  /// progress thread in turn).
  std::chrono::steady_clock::time_point receiver_alive_at_{};
  static constexpr std::chrono::microseconds receiver_check_interval{100};
  std::uint64_t stream_id_ = 0;
  std::uint64_t sequence_ = 0;
  std::uint64_t window_ = 0, credit_ = 0, receiver_max_ = 0, head_ = 0;
  std::uint64_t window_address_ = 0, window_key_ = 0;
  bool tagged_ = false;   ///< payloads go as tagged messages (the receiver's choice)
  bool receipts_ = false; ///< the receiver sends receipts (its first credit says): flush waits
  bool failed_ = false;   ///< a send() failed: the destructor does not flush
  std::uint64_t receipt_through_ = 0; ///< the receiver took every segment below this sequence
  std::string mismatch_;              ///< why this sender cannot follow the receiver's mode
  bool mismatch_told_ = false;
  error refused_{errc::ok, {}};            ///< the receiver refused this stream (error frame), why
  std::chrono::milliseconds keepalive_{0}; ///< say this sender lives this often (0: never)
  std::chrono::steady_clock::time_point last_said_{}; ///< last segment or keepalive
  std::vector<std::byte> hello_;                      ///< not yet accepted by the provider
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
