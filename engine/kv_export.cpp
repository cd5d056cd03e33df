#include "engine/kv_export.hpp"

#include "engine/error.hpp"

#include <cstring>
#include <string>

namespace duet::engine {

namespace {

std::size_t element_bytes(dtype t) {
  return t == dtype::f32 ? 4 : 2;
}

std::string describe(const kv_segment_meta& m) {
  return "segment layer " + std::to_string(m.layer) + " positions [" + std::to_string(m.pos_begin) +
         ", " + std::to_string(m.pos_end) + ")";
}

/// Checks `meta` against `cache` and the buffer size; throws with what differs.
void validate(const kv_cache& cache, seq_id id, const kv_segment_meta& m, std::size_t buffer,
              const char* op) {
  const auto& c = cache.config();
  auto fail = [&](engine_errc code, const std::string& what) {
    throw engine_error(code, std::string{op} + " of " + describe(m) + " for sequence " +
                                 std::to_string(id) + ": " + what);
  };
  if (m.type != c.type)
    fail(engine_errc::mismatch, "dtype " + std::string(dtype_name(m.type)) + ", cache holds " +
                                    std::string(dtype_name(c.type)));
  if (m.n_kv_heads != c.n_kv_heads || m.head_size != c.head_size)
    fail(engine_errc::mismatch,
         "shape " + std::to_string(m.n_kv_heads) + " kv heads x " + std::to_string(m.head_size) +
             ", cache has " + std::to_string(c.n_kv_heads) + " x " + std::to_string(c.head_size));
  if (!cache.holds_layer(m.layer))
    fail(engine_errc::invalid_argument, "layer not held (cache holds [" +
                                            std::to_string(c.first_layer) + ", " +
                                            std::to_string(c.last_layer) + "))");
  if (m.pos_begin < 0 || m.pos_end < m.pos_begin || m.pos_end > c.seq_len_max)
    fail(engine_errc::invalid_argument,
         "bad position range (seq_len_max " + std::to_string(c.seq_len_max) + ")");
  if (buffer != kv_segment_bytes(m))
    fail(engine_errc::mismatch, "buffer has " + std::to_string(buffer) + " bytes, expected " +
                                    std::to_string(kv_segment_bytes(m)));
  if (!cache.has_seq(id)) fail(engine_errc::invalid_argument, "unknown sequence");
}

} // namespace

std::size_t kv_segment_bytes(const kv_segment_meta& m) {
  if (m.pos_end <= m.pos_begin || m.n_kv_heads <= 0 || m.head_size <= 0) return 0;
  if (m.type != dtype::f32 && m.type != dtype::f16) return 0;
  return 2 * static_cast<std::size_t>(m.tokens()) * static_cast<std::size_t>(m.kv_dim()) *
         element_bytes(m.type);
}

kv_segment_meta kv_segment_for(const kv_cache& cache, int layer, int pos_begin, int pos_end) {
  const auto& c = cache.config();
  return kv_segment_meta{layer, pos_begin, pos_end, c.type, c.n_kv_heads, c.head_size};
}

void kv_export(const kv_cache& cache, seq_id id, const kv_segment_meta& meta,
               std::span<std::byte> out) {
  validate(cache, id, meta, out.size(), "kv_export");
  int len = cache.layer_length(id, meta.layer);
  if (meta.pos_end > len)
    throw engine_error(engine_errc::invalid_argument,
                       "kv_export of " + describe(meta) + " for sequence " + std::to_string(id) +
                           ": only " + std::to_string(len) + " positions written");
  auto table = cache.block_table(id);
  std::size_t row = cache.row_bytes(), n = static_cast<std::size_t>(meta.tokens());
  for (int p = meta.pos_begin; p < meta.pos_end; ++p) {
    auto i = static_cast<std::size_t>(p - meta.pos_begin);
    std::memcpy(out.data() + i * row, cache.k_row(table, meta.layer, p), row);
    std::memcpy(out.data() + (n + i) * row, cache.v_row(table, meta.layer, p), row);
  }
}

void kv_import(kv_cache& cache, seq_id id, const kv_segment_meta& meta,
               std::span<const std::byte> in) {
  validate(cache, id, meta, in.size(), "kv_import");
  int len = cache.layer_length(id, meta.layer);
  if (meta.pos_begin > len)
    throw engine_error(engine_errc::invalid_argument,
                       "kv_import of " + describe(meta) + " for sequence " + std::to_string(id) +
                           ": leaves a gap after the " + std::to_string(len) +
                           " positions already present");
  if (meta.pos_end > cache.seq_capacity(id))
    throw engine_error(engine_errc::out_of_capacity,
                       "kv_import of " + describe(meta) + " for sequence " + std::to_string(id) +
                           ": blocks reserved for " + std::to_string(cache.seq_capacity(id)) +
                           " positions (call seq_reserve first)");
  auto table = cache.block_table(id);
  std::size_t row = cache.row_bytes(), n = static_cast<std::size_t>(meta.tokens());
  for (int p = meta.pos_begin; p < meta.pos_end; ++p) {
    auto i = static_cast<std::size_t>(p - meta.pos_begin);
    std::memcpy(cache.k_row(table, meta.layer, p), in.data() + i * row, row);
    std::memcpy(cache.v_row(table, meta.layer, p), in.data() + (n + i) * row, row);
  }
  cache.note_written(id, meta.layer, meta.pos_begin, meta.pos_end, false);
}

} // namespace duet::engine
