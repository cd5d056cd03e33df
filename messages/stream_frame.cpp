#include "messages/stream_frame.hpp"

#include "messages/duet.capnp.h"

#include <cstring>

namespace duet::messages {

namespace {

problem malformed(std::string context) {
  return problem{problem_kind::malformed, std::move(context)};
}

void fill_segment(wire::KvSegment::Builder b, const kv_envelope& e, capnp::Orphanage orphanage,
                  bool* copied) {
  const auto& h = e.header;
  b.setRequestId(h.request_id);
  b.setEpoch(h.epoch);
  b.setLayer(h.layer);
  b.setTokenBegin(h.token_begin);
  b.setTokenEnd(h.token_end);
  b.setDtype(static_cast<wire::KvDtype>(h.dtype));
  b.setNKvHeads(h.n_kv_heads);
  b.setHeadSize(h.head_size);
  b.setChecksumXxh3(h.checksum_xxh3);
  b.setPayloadBytes(h.payload_bytes);
  b.setSequence(e.sequence);
  b.setStreamId(e.stream_id);
  switch (e.placement) {
  case payload_placement::inline_bytes: {
    auto bytes = e.inline_payload;
    auto* p = reinterpret_cast<const kj::byte*>(bytes.data());
    const bool word_shaped = reinterpret_cast<std::uintptr_t>(p) % 8 == 0 && bytes.size() % 8 == 0;
    if (word_shaped && !bytes.empty()) {
      // The payload becomes a segment of its own: no copy (orphan.h's rules: aligned, and
      // whole words so no bytes past the end are exposed).
      b.getPayload().adoptInline(
          orphanage.referenceExternalData(capnp::Data::Reader(p, bytes.size())));
    } else {
      auto dst = b.getPayload().initInline(static_cast<unsigned>(bytes.size()));
      if (!bytes.empty()) std::memcpy(dst.begin(), p, bytes.size());
      *copied = !bytes.empty();
    }
    break;
  }
  case payload_placement::next_frame:
    b.getPayload().setNextFrame();
    break;
  case payload_placement::remote_region: {
    auto r = b.getPayload().initRemote();
    r.setOffset(e.remote_offset);
    r.setLength(e.remote_length);
    break;
  }
  }
}

void fill(wire::TransportFrame::Builder root, const stream_frame& frame, capnp::Orphanage orphanage,
          bool* copied) {
  if (auto* e = std::get_if<kv_envelope>(&frame)) {
    fill_segment(root.initSegment(), *e, orphanage, copied);
  } else if (auto* h = std::get_if<stream_hello>(&frame)) {
    auto b = root.initHello();
    b.setProtocolVersion(h->protocol_version);
    b.setStreamId(h->stream_id);
    b.setEndpointName(capnp::Data::Reader(
        reinterpret_cast<const kj::byte*>(h->endpoint_name.data()), h->endpoint_name.size()));
  } else if (auto* c = std::get_if<credit_grant>(&frame)) {
    auto b = root.initCredit();
    b.setStreamId(c->stream_id);
    b.setGrantBytes(c->grant_bytes);
    b.setWindowBytes(c->window_bytes);
    b.setSegmentBytesMax(c->segment_bytes_max);
    b.setWindowAddress(c->window_address);
    b.setWindowKey(c->window_key);
    b.setKeepaliveMs(c->keepalive_ms);
    b.setReceipts(c->receipts);
    b.setReceiptThrough(c->receipt_through);
  } else if (auto* err = std::get_if<error_info>(&frame)) {
    auto b = root.initError();
    b.setCode(static_cast<wire::ErrorCode>(err->code));
    b.setContext(err->context);
  } else if (auto* alive = std::get_if<stream_alive>(&frame)) {
    root.initAlive().setStreamId(alive->stream_id);
  } else if (auto* bye = std::get_if<stream_bye>(&frame)) {
    if (bye->stream_id == 0)
      root.setBye();
    else
      root.initEnd().setStreamId(bye->stream_id);
  }
}

decoded<stream_frame> read_segment(wire::KvSegment::Reader r, std::span<const std::byte> input,
                                   bool input_copied, std::size_t segment_bytes_max) {
  kv_envelope e;
  auto& h = e.header;
  h.request_id = r.getRequestId();
  h.epoch = r.getEpoch();
  h.layer = r.getLayer();
  h.token_begin = r.getTokenBegin();
  h.token_end = r.getTokenEnd();
  h.dtype = static_cast<kv_dtype>(r.getDtype());
  h.n_kv_heads = r.getNKvHeads();
  h.head_size = r.getHeadSize();
  h.checksum_xxh3 = r.getChecksumXxh3();
  h.payload_bytes = r.getPayloadBytes();
  e.sequence = r.getSequence();
  e.stream_id = r.getStreamId();
  if (h.payload_bytes > segment_bytes_max)
    return problem{problem_kind::oversized,
                   "kv segment: payload_bytes " + std::to_string(h.payload_bytes) +
                       " exceeds segment_bytes_max " + std::to_string(segment_bytes_max)};
  if (auto why = kv_header_problem(h); !why.empty()) return malformed("kv segment header: " + why);
  auto payload = r.getPayload();
  switch (payload.which()) {
  case wire::KvSegment::Payload::INLINE: {
    auto data = payload.getInline();
    if (data.size() != h.payload_bytes)
      return problem{problem_kind::truncated,
                     "kv segment: inline payload has " + std::to_string(data.size()) +
                         " bytes, header says " + std::to_string(h.payload_bytes)};
    e.placement = payload_placement::inline_bytes;
    auto* first = reinterpret_cast<const std::byte*>(data.begin());
    if (input_copied) { // the reader's words die with it: keep the bytes
      e.owned_payload.assign(first, first + data.size());
      e.inline_payload = e.owned_payload;
    } else {
      e.inline_payload = std::span<const std::byte>(first, data.size());
    }
    (void)input;
    break;
  }
  case wire::KvSegment::Payload::NEXT_FRAME:
    e.placement = payload_placement::next_frame;
    break;
  case wire::KvSegment::Payload::REMOTE: {
    auto rr = payload.getRemote();
    // A length that differs from payload_bytes is reported by the transport's arrival check
    // (truncated): the receiver still needs the region to account for the sender's credit.
    if (rr.getLength() > segment_bytes_max)
      return problem{problem_kind::oversized,
                     "kv segment: remote region of " + std::to_string(rr.getLength()) + " bytes"};
    e.placement = payload_placement::remote_region;
    e.remote_offset = rr.getOffset();
    e.remote_length = rr.getLength();
    break;
  }
  default:
    return malformed("kv segment: unknown payload placement " +
                     std::to_string(static_cast<unsigned>(payload.which())));
  }
  return stream_frame(std::move(e));
}

} // namespace

frame_message::frame_message(const stream_frame& frame) {
  auto root = builder_.initRoot<wire::TransportFrame>();
  fill(root, frame, builder_.getOrphanage(), &payload_copied_);
}

std::vector<std::byte> encode_frame(const stream_frame& frame) {
  frame_message m(frame);
  return m.flat();
}

decoded<stream_frame> decode_frame(std::span<const std::byte> bytes,
                                   std::size_t segment_bytes_max) {
  bool copied = reinterpret_cast<std::uintptr_t>(bytes.data()) % alignof(capnp::word) != 0;
  return read_flat<wire::TransportFrame>(
      bytes, kv_limits(segment_bytes_max), "transport frame",
      [&](wire::TransportFrame::Reader r) -> decoded<stream_frame> {
        switch (r.which()) {
        case wire::TransportFrame::SEGMENT:
          return read_segment(r.getSegment(), bytes, copied, segment_bytes_max);
        case wire::TransportFrame::HELLO: {
          auto h = r.getHello();
          stream_hello out;
          out.protocol_version = h.getProtocolVersion();
          if (out.protocol_version < 1 || out.protocol_version > stream_protocol_version)
            return malformed("stream hello: unsupported protocol version " +
                             std::to_string(out.protocol_version));
          out.stream_id = h.getStreamId();
          auto name = h.getEndpointName();
          auto* first = reinterpret_cast<const std::byte*>(name.begin());
          out.endpoint_name.assign(first, first + name.size());
          return stream_frame(std::move(out));
        }
        case wire::TransportFrame::CREDIT: {
          auto c = r.getCredit();
          return stream_frame(credit_grant{c.getStreamId(), c.getGrantBytes(), c.getWindowBytes(),
                                           c.getSegmentBytesMax(), c.getWindowAddress(),
                                           c.getWindowKey(), c.getKeepaliveMs(), c.getReceipts(),
                                           c.getReceiptThrough()});
        }
        case wire::TransportFrame::ERROR: {
          auto e = r.getError();
          return stream_frame(error_info{static_cast<std::uint16_t>(e.getCode()),
                                         std::string(e.getContext().cStr())});
        }
        case wire::TransportFrame::BYE:
          return stream_frame(stream_bye{});
        case wire::TransportFrame::END:
          return stream_frame(stream_bye{r.getEnd().getStreamId()});
        case wire::TransportFrame::ALIVE:
          return stream_frame(stream_alive{r.getAlive().getStreamId()});
        }
        return malformed("transport frame: unknown kind " +
                         std::to_string(static_cast<unsigned>(r.which())));
      });
}

} // namespace duet::messages
