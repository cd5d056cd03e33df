// The paged KV pool: bounded, all-or-nothing reservation, blocks returned, sequences
// independent; and KV segment import validation.
#include "engine/error.hpp"
#include "engine/kv_cache.hpp"
#include "engine/kv_export.hpp"

#include <catch2/catch.hpp>

#include <cstring>
#include <vector>

using namespace duet::engine;

namespace {

kv_cache_config small_config(dtype type = dtype::f32) {
  kv_cache_config c;
  c.first_layer = 0;
  c.last_layer = 2;
  c.n_kv_heads = 2;
  c.head_size = 4;
  c.seq_len_max = 64;
  c.block_tokens = 4;
  c.blocks_max = 10;
  c.type = type;
  return c;
}

/// Writes a recognisable value into every K/V element of positions [0, n) of `id`.
void fill(kv_cache& kv, seq_id id, int n, float base) {
  auto table = kv.block_table(id);
  for (int l = 0; l < 2; ++l)
    for (int p = 0; p < n; ++p)
      for (int j = 0; j < 8; ++j) {
        float k = base + static_cast<float>(l * 1000 + p * 10 + j), v = -k;
        std::memcpy(kv.k_row(table, l, p) + j * 4, &k, 4);
        std::memcpy(kv.v_row(table, l, p) + j * 4, &v, 4);
      }
  for (int l = 0; l < 2; ++l) kv.note_written(id, l, 0, n, true);
}

bool intact(const kv_cache& kv, seq_id id, int n, float base) {
  auto table = kv.block_table(id);
  for (int l = 0; l < 2; ++l)
    for (int p = 0; p < n; ++p)
      for (int j = 0; j < 8; ++j) {
        float k, v, want = base + static_cast<float>(l * 1000 + p * 10 + j);
        std::memcpy(&k, kv.k_row(table, l, p) + j * 4, 4);
        std::memcpy(&v, kv.v_row(table, l, p) + j * 4, 4);
        if (k != want || v != -want) return false;
      }
  return true;
}

} // namespace

TEST_CASE("the KV pool refuses reservations beyond its bound and changes nothing then") {
  kv_cache kv(small_config());
  CHECK(kv.blocks_max() == 10);
  CHECK(kv.block_bytes() == 2 * 2 * 4 * 8 * 4);
  REQUIRE(kv.seq_add(1));
  CHECK_FALSE(kv.seq_add(1));
  REQUIRE(kv.seq_reserve(1, 30)); // 8 blocks
  CHECK(kv.blocks_used() == 8);
  REQUIRE(kv.seq_add(2));
  CHECK_FALSE(kv.seq_reserve(2, 12)); // needs 3, 2 free: all or nothing
  CHECK(kv.blocks_free() == 2);
  CHECK(kv.seq_capacity(2) == 0);
  CHECK(kv.seq_reserve(2, 8));
  CHECK(kv.blocks_free() == 0);
  CHECK_FALSE(kv.seq_reserve(1, 33));
  CHECK(kv.seq_reserve(1, 32));                         // already covered by its blocks
  CHECK_THROWS_AS(kv.seq_reserve(1, 65), engine_error); // beyond seq_len_max
  CHECK_THROWS_AS(kv.seq_reserve(99, 1), engine_error); // unknown sequence
}

TEST_CASE("freed sequences return their blocks and removing one leaves the others intact") {
  kv_cache kv(small_config());
  for (seq_id id : {1, 2, 3}) {
    REQUIRE(kv.seq_add(id));
    REQUIRE(kv.seq_reserve(id, 9)); // 3 blocks each, interleaved allocation order
    fill(kv, id, 9, static_cast<float>(id) * 100000.0f);
  }
  CHECK(kv.blocks_used() == 9);
  CHECK(kv.seq_length(2) == 9);
  REQUIRE(kv.seq_free(2));
  CHECK_FALSE(kv.seq_free(2));
  CHECK(kv.blocks_used() == 6);
  CHECK(kv.seq_length(2) == 0);
  CHECK(intact(kv, 1, 9, 100000.0f));
  CHECK(intact(kv, 3, 9, 300000.0f));
  // The freed blocks serve a new sequence without disturbing the others.
  REQUIRE(kv.seq_add(4));
  REQUIRE(kv.seq_reserve(4, 16));
  fill(kv, 4, 16, 400000.0f);
  CHECK(kv.blocks_free() == 0);
  CHECK(intact(kv, 1, 9, 100000.0f));
  CHECK(intact(kv, 3, 9, 300000.0f));
  for (seq_id id : {1, 3, 4}) REQUIRE(kv.seq_free(id));
  CHECK(kv.blocks_used() == 0);
  CHECK(kv.blocks_free() == 10);
}

TEST_CASE("writes that leave a gap or exceed the reservation are rejected") {
  kv_cache kv(small_config());
  REQUIRE(kv.seq_add(1));
  REQUIRE(kv.seq_reserve(1, 8));
  CHECK_THROWS_AS(kv.note_written(1, 0, 1, 2, true), engine_error); // gap at 0
  CHECK_THROWS_AS(kv.note_written(1, 0, 0, 9, true), engine_error); // beyond blocks
  kv.note_written(1, 0, 0, 5, true);
  CHECK(kv.layer_length(1, 0) == 5);
  CHECK(kv.seq_length(1) == 0); // layer 1 still empty
  kv.seq_truncate(1, 3);
  CHECK(kv.layer_length(1, 0) == 3);
  CHECK_THROWS_AS(kv.layer_length(1, 2), engine_error); // layer not held
}

TEST_CASE("a bad KV cache config is rejected") {
  auto c = small_config();
  c.type = dtype::q8_0;
  CHECK_THROWS_AS(kv_cache(c), engine_error);
  c = small_config();
  c.last_layer = 0;
  CHECK_THROWS_AS(kv_cache(c), engine_error);
  c = small_config();
  c.blocks_max = 0;
  CHECK_THROWS_AS(kv_cache(c), engine_error);
}

TEST_CASE("KV segments round-trip and imports with the wrong meta are rejected") {
  auto type = GENERATE(dtype::f32, dtype::f16);
  auto cfg = small_config(type);
  kv_cache src(cfg), dst(cfg);
  REQUIRE(src.seq_add(1));
  REQUIRE(src.seq_reserve(1, 10));
  auto table = src.block_table(1);
  for (int l = 0; l < 2; ++l) {
    for (int p = 0; p < 10; ++p)
      for (std::size_t b = 0; b < src.row_bytes(); ++b) {
        src.k_row(table, l, p)[b] = static_cast<std::byte>(l * 50 + p * 3 + static_cast<int>(b));
        src.v_row(table, l, p)[b] = static_cast<std::byte>(200 - l * 50 - p - static_cast<int>(b));
      }
    src.note_written(1, l, 0, 10, true);
  }
  auto meta = kv_segment_for(src, 1, 2, 7);
  CHECK(kv_segment_bytes(meta) == 2 * 5 * 8 * (type == dtype::f32 ? 4u : 2u));
  std::vector<std::byte> seg(kv_segment_bytes(meta));
  kv_export(src, 1, meta, seg);
  // Layout: K rows then V rows.
  CHECK(std::memcmp(seg.data(), src.k_row(table, 1, 2), src.row_bytes()) == 0);
  CHECK(std::memcmp(seg.data() + 5 * src.row_bytes(), src.v_row(table, 1, 2), src.row_bytes()) ==
        0);

  REQUIRE(dst.seq_add(5));
  REQUIRE(dst.seq_reserve(5, 10));
  CHECK_THROWS_AS(kv_import(dst, 5, meta, seg), engine_error); // gap: positions 0..2 missing
  auto head = kv_segment_for(src, 1, 0, 2);
  std::vector<std::byte> seg0(kv_segment_bytes(head));
  kv_export(src, 1, head, seg0);
  kv_import(dst, 5, head, seg0);
  kv_import(dst, 5, meta, seg);
  kv_import(dst, 5, meta, seg); // idempotent re-send
  CHECK(dst.layer_length(5, 1) == 7);
  auto dt = dst.block_table(5);
  for (int p = 0; p < 7; ++p) {
    CHECK(std::memcmp(dst.k_row(dt, 1, p), src.k_row(table, 1, p), src.row_bytes()) == 0);
    CHECK(std::memcmp(dst.v_row(dt, 1, p), src.v_row(table, 1, p), src.row_bytes()) == 0);
  }

  auto expect_error = [&](kv_segment_meta m, std::span<const std::byte> bytes, engine_errc code) {
    try {
      kv_import(dst, 5, m, bytes);
      FAIL("import accepted a bad segment");
    } catch (const engine_error& e) {
      INFO(e.what());
      CHECK(e.code() == code);
    }
  };
  auto bad = meta;
  bad.type = type == dtype::f32 ? dtype::f16 : dtype::f32;
  expect_error(bad, seg, engine_errc::mismatch);
  bad = meta;
  bad.head_size = 8;
  bad.n_kv_heads = 1;
  expect_error(bad, seg, engine_errc::mismatch);
  bad = meta;
  bad.layer = 2;
  expect_error(bad, seg, engine_errc::invalid_argument);
  expect_error(meta, std::span(seg).first(seg.size() - 1), engine_errc::mismatch);
  bad = meta;
  bad.pos_begin = 7;
  bad.pos_end = 12; // beyond the 10 reserved positions (3 blocks = 12: reserve only 10 -> 12)
  std::vector<std::byte> big(kv_segment_bytes(bad));
  REQUIRE(dst.seq_capacity(5) == 12);
  bad.pos_end = 13;
  big.resize(kv_segment_bytes(bad));
  expect_error(bad, big, engine_errc::out_of_capacity);
  CHECK(dst.layer_length(5, 1) == 7); // nothing changed by the rejected imports
  CHECK_THROWS_AS(kv_export(src, 1, kv_segment_for(src, 0, 0, 11), std::span<std::byte>()),
                  engine_error);
}
