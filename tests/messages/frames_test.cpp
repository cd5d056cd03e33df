// Stream frames (KV envelope, hello, credit, error, bye): round trips, zero-copy inline
// payloads, and rejection of malformed, truncated and oversized bytes.
#include "messages/duet.capnp.h"
#include "messages/stream_frame.hpp"

#include <catch2/catch.hpp>

#include <cstring>
#include <random>

using namespace duet::messages;

namespace {

kv_segment_header make_header(std::size_t tokens) {
  kv_segment_header h;
  h.request_id = 42;
  h.epoch = 3;
  h.layer = 7;
  h.token_begin = 100;
  h.token_end = static_cast<std::uint32_t>(100 + tokens);
  h.dtype = kv_dtype::f16;
  h.n_kv_heads = 2;
  h.head_size = 8;
  h.payload_bytes = *kv_payload_bytes(h);
  return h;
}

std::vector<std::byte> random_bytes(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::byte> v(n);
  for (auto& b : v) b = static_cast<std::byte>(rng());
  return v;
}

} // namespace

TEST_CASE("a kv segment envelope with an inline payload round trips with header and bytes intact") {
  auto h = make_header(4); // 2 * 4 * 2 * 8 * 2 = 256 bytes
  auto payload = random_bytes(h.payload_bytes, 1);
  h.checksum_xxh3 = checksum_xxh3(payload);
  kv_envelope e;
  e.header = h;
  e.sequence = 9;
  e.placement = payload_placement::inline_bytes;
  e.inline_payload = payload;
  auto bytes = encode_frame(e);
  auto d = decode_frame(bytes, 1 << 20);
  REQUIRE(d.ok());
  auto& out = std::get<kv_envelope>(*d);
  CHECK(out.header == h);
  CHECK(out.sequence == 9);
  REQUIRE(out.inline_payload.size() == payload.size());
  CHECK(std::memcmp(out.inline_payload.data(), payload.data(), payload.size()) == 0);
  CHECK(checksum_xxh3(out.inline_payload) == h.checksum_xxh3);
}

TEST_CASE("an aligned inline payload becomes its own message segment without a copy") {
  auto h = make_header(4);
  std::vector<std::uint64_t> storage(h.payload_bytes / 8, 0x5a5a5a5a5a5a5a5aull);
  kv_envelope e;
  e.header = h;
  e.placement = payload_placement::inline_bytes;
  e.inline_payload = std::as_bytes(std::span(storage));
  frame_message m(e);
  CHECK_FALSE(m.payload_copied());
  auto segs = m.segments();
  REQUIRE(segs.size() == 2);
  CHECK(reinterpret_cast<const void*>(segs[1].begin()) == storage.data());
}

TEST_CASE("a misaligned frame is still read, by copying it into aligned storage") {
  auto h = make_header(2);
  auto payload = random_bytes(h.payload_bytes, 2);
  kv_envelope e;
  e.header = h;
  e.placement = payload_placement::inline_bytes;
  e.inline_payload = payload;
  auto bytes = encode_frame(e);
  std::vector<std::byte> shifted(bytes.size() + 1);
  std::memcpy(shifted.data() + 1, bytes.data(), bytes.size());
  auto d = decode_frame(std::span(shifted).subspan(1), 1 << 20);
  REQUIRE(d.ok());
  auto& out = std::get<kv_envelope>(*d);
  shifted.assign(shifted.size(), std::byte{0}); // the decoded payload must not point here
  REQUIRE(out.inline_payload.size() == payload.size());
  CHECK(std::memcmp(out.inline_payload.data(), payload.data(), payload.size()) == 0);
}

TEST_CASE("hello, credit, error and bye frames round trip") {
  stream_hello hello;
  hello.stream_id = 77;
  hello.endpoint_name = random_bytes(24, 3);
  auto d1 = decode_frame(encode_frame(hello), 1024);
  REQUIRE(d1.ok());
  CHECK(std::get<stream_hello>(*d1).endpoint_name == hello.endpoint_name);
  CHECK(std::get<stream_hello>(*d1).stream_id == 77);

  credit_grant c{1, 2, 3, 4, 5, 6};
  auto d2 = decode_frame(encode_frame(c), 1024);
  REQUIRE(d2.ok());
  auto& c2 = std::get<credit_grant>(*d2);
  CHECK(c2.stream_id == 1);
  CHECK(c2.grant_bytes == 2);
  CHECK(c2.window_bytes == 3);
  CHECK(c2.segment_bytes_max == 4);
  CHECK(c2.window_address == 5);
  CHECK(c2.window_key == 6);

  auto d3 = decode_frame(encode_frame(error_info{3, "checksum mismatch at layer 7"}), 1024);
  REQUIRE(d3.ok());
  CHECK(std::get<error_info>(*d3).code == 3);
  CHECK(std::get<error_info>(*d3).context == "checksum mismatch at layer 7");

  auto d4 = decode_frame(encode_frame(stream_bye{0xfeedfacecafe}), 1024);
  REQUIRE(d4.ok());
  REQUIRE(std::holds_alternative<stream_bye>(*d4));
  CHECK(std::get<stream_bye>(*d4).stream_id == 0xfeedfacecafe);
  auto d5 = decode_frame(encode_frame(stream_bye{}), 1024);
  REQUIRE(d5.ok());
  CHECK(std::get<stream_bye>(*d5).stream_id == 0); // not said
  auto d6 = decode_frame(encode_frame(stream_alive{0xabcdef}), 1024);
  REQUIRE(d6.ok());
  REQUIRE(std::holds_alternative<stream_alive>(*d6));
  CHECK(std::get<stream_alive>(*d6).stream_id == 0xabcdef);
  auto d7 = decode_frame(encode_frame(credit_grant{1, 2, 3, 4, 5, 6, 2500}), 1024);
  REQUIRE(d7.ok());
  CHECK(std::get<credit_grant>(*d7).keepalive_ms == 2500);
  CHECK_FALSE(std::get<credit_grant>(*d7).receipts);
  CHECK(std::get<credit_grant>(*d7).receipt_through == 0);
  auto d8 = decode_frame(encode_frame(credit_grant{1, 0, 0, 0, 0, 0, 0, true, 0x1234567890}), 1024);
  REQUIRE(d8.ok());
  CHECK(std::get<credit_grant>(*d8).receipts);
  CHECK(std::get<credit_grant>(*d8).receipt_through == 0x1234567890);
  // Protocol 1 (no keepalives) is still read; an unknown version is not.
  CHECK(decode_frame(encode_frame(stream_hello{1, 9, {}}), 1024).ok());
  CHECK(decode_frame(encode_frame(stream_hello{2, 9, {}}), 1024).ok());
  CHECK_FALSE(decode_frame(encode_frame(stream_hello{3, 9, {}}), 1024).ok());
}

TEST_CASE("every truncation of a frame is rejected as truncated or malformed, never thrown") {
  auto h = make_header(2);
  auto payload = random_bytes(h.payload_bytes, 4);
  kv_envelope e;
  e.header = h;
  e.placement = payload_placement::inline_bytes;
  e.inline_payload = payload;
  auto bytes = encode_frame(e);
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    auto d = decode_frame(std::span(bytes).first(n), 1 << 20);
    INFO("length " << n);
    REQUIRE_FALSE(d.ok());
    CHECK(d.why().kind != problem_kind::oversized);
  }
}

TEST_CASE("a payload larger than segment_bytes_max is rejected as oversized") {
  auto h = make_header(64); // 4096 bytes
  kv_envelope e;
  e.header = h;
  e.placement = payload_placement::next_frame;
  auto d = decode_frame(encode_frame(e), 4095);
  REQUIRE_FALSE(d.ok());
  CHECK(d.why().kind == problem_kind::oversized);
}

TEST_CASE("a header whose shape disagrees with payload_bytes is rejected as malformed") {
  auto h = make_header(4);
  h.payload_bytes += 2;
  kv_envelope e;
  e.header = h;
  auto d = decode_frame(encode_frame(e), 1 << 20);
  REQUIRE_FALSE(d.ok());
  CHECK(d.why().kind == problem_kind::malformed);
  CHECK_THAT(d.why().context, Catch::Contains("payload_bytes"));

  auto bad_range = make_header(4);
  bad_range.token_end = bad_range.token_begin;
  bad_range.payload_bytes = 0;
  e.header = bad_range;
  CHECK_FALSE(decode_frame(encode_frame(e), 1 << 20).ok());
}

TEST_CASE("an inline payload shorter than the header announces is rejected as truncated") {
  auto h = make_header(4);
  auto payload = random_bytes(h.payload_bytes - 8, 5);
  kv_envelope e;
  e.header = h;
  e.placement = payload_placement::inline_bytes;
  e.inline_payload = payload;
  auto d = decode_frame(encode_frame(e), 1 << 20);
  REQUIRE_FALSE(d.ok());
  CHECK(d.why().kind == problem_kind::truncated);
}

TEST_CASE("random bytes never decode into a kv segment and never throw") {
  std::uint32_t seed = std::random_device{}();
  INFO("seed " << seed);
  std::mt19937 rng(seed);
  for (int i = 0; i < 2000; ++i) {
    auto bytes = random_bytes(8 * (1 + rng() % 64), rng());
    auto d = decode_frame(bytes, 1 << 20); // must return, whatever it says
    if (d.ok() && std::holds_alternative<kv_envelope>(*d))
      CHECK(kv_header_problem(std::get<kv_envelope>(*d).header).empty());
  }
}

TEST_CASE("kv payload size follows the shape for f32, f16 and q8_0") {
  kv_segment_header h;
  h.token_begin = 0;
  h.token_end = 3;
  h.n_kv_heads = 4;
  h.head_size = 64;
  h.dtype = kv_dtype::f32;
  CHECK(*kv_payload_bytes(h) == 2u * 3 * 4 * 64 * 4);
  h.dtype = kv_dtype::f16;
  CHECK(*kv_payload_bytes(h) == 2u * 3 * 4 * 64 * 2);
  h.dtype = kv_dtype::q8_0;
  CHECK(*kv_payload_bytes(h) == 2u * 3 * 4 * 2 * 34);
  h.head_size = 48;
  CHECK_FALSE(kv_payload_bytes(h).has_value());
}
