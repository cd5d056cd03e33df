#pragma once

// A paged KV cache (vLLM's PagedAttention layout, kept simple): ONE pool of fixed-size blocks,
// preallocated once and bounded by blocks_max, and a block table per sequence. A block holds
// `block_tokens` consecutive positions of K and V for every layer the cache covers, so a
// sequence grows one block at a time and sequences are added and removed without copying
// others. A cache covers a layer range [first_layer, last_layer): a prefill shard holds only
// its layers. Element type f32 or f16 (IEEE binary16 bits).
//
// Block layout (elements of `type`):  block[layer - first_layer][0 = K, 1 = V][token][kv_dim]
// where token = pos % block_tokens and kv_dim = n_kv_heads * head_size (head h at h*head_size).
//
// Lengths: every held layer has its own length (positions 0..len-1 written), so a cache that
// holds several layers can be filled layer range by layer range; seq_length() is the minimum.
// Not thread-safe: one owner (a decode lane, a prefill shard) drives it.

#include "engine/dtype.hpp"
#include "engine/huge_page_memory.hpp"
#include "engine/model_weights.hpp"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <unordered_map>
#include <vector>

namespace duet::engine {

/// Identifies a sequence in a kv_cache (the fabric uses its request id).
using seq_id = std::uint64_t;

struct kv_cache_config {
  int first_layer = 0;        ///< first layer held
  int last_layer = 0;         ///< one past the last layer held
  int n_kv_heads = 0;         ///< K/V heads
  int head_size = 0;          ///< values per head
  int seq_len_max = 0;        ///< positions one sequence may hold (the model's seq_len)
  int block_tokens = 16;      ///< positions per block
  std::size_t blocks_max = 0; ///< pool bound: blocks preallocated
  dtype type = dtype::f32;    ///< f32 or f16

  int kv_dim() const { return n_kv_heads * head_size; }
  int layers() const { return last_layer - first_layer; }

  /// A config for `model`'s layers [first_layer, last_layer) with room for `blocks_max` blocks.
  static kv_cache_config for_model(const model_config& model, int first_layer, int last_layer,
                                   std::size_t blocks_max, dtype type = dtype::f32,
                                   int block_tokens = 16);
  /// Blocks that hold `n_sequences` full-length (seq_len_max) sequences.
  std::size_t blocks_for(int n_sequences) const;
};

class kv_cache {
public:
  /// Allocates the pool (blocks_max * block_bytes(), pages touched lazily). Throws
  /// engine_error(invalid_argument) for a bad config (empty layer range, dtype not f32/f16,
  /// non-positive sizes) or out_of_capacity when the pool size overflows.
  explicit kv_cache(const kv_cache_config& config);

  kv_cache(const kv_cache&) = delete;
  kv_cache& operator=(const kv_cache&) = delete;

  // -- sequences -----------------------------------------------------------------------------

  /// Adds an empty sequence (no blocks yet). False when `id` is already present.
  bool seq_add(seq_id id);

  /// Makes sure positions [0, n_tokens) of `id` have blocks. All or nothing: false (and no
  /// change) when the pool has too few free blocks; the caller waits or refuses. Throws
  /// engine_error(invalid_argument) for an unknown id or n_tokens > seq_len_max.
  bool seq_reserve(seq_id id, int n_tokens);

  /// Removes `id` and returns its blocks to the pool. False when it was not present.
  bool seq_free(seq_id id);

  /// Forgets positions >= n_tokens in every layer (keeps the blocks). For rollback.
  void seq_truncate(seq_id id, int n_tokens);

  bool has_seq(seq_id id) const { return seqs_.count(id) != 0; }
  /// Positions written in every held layer (0 for unknown ids).
  int seq_length(seq_id id) const;
  /// Positions written in `layer` (first_layer <= layer < last_layer).
  int layer_length(seq_id id, int layer) const;
  /// Positions that have blocks.
  int seq_capacity(seq_id id) const;
  std::size_t sequences() const { return seqs_.size(); }

  // -- pool ----------------------------------------------------------------------------------

  std::size_t blocks_used() const { return config_.blocks_max - free_blocks_.size(); }
  std::size_t blocks_free() const { return free_blocks_.size(); }
  std::size_t blocks_max() const { return config_.blocks_max; }
  /// Bytes of one block: layers * 2 * block_tokens * kv_dim * element size.
  std::size_t block_bytes() const { return block_bytes_; }
  std::size_t pool_bytes() const { return block_bytes_ * config_.blocks_max; }
  const kv_cache_config& config() const { return config_; }
  bool holds_layer(int layer) const {
    return layer >= config_.first_layer && layer < config_.last_layer;
  }

  // -- raw access (forward pass, export/import) ----------------------------------------------

  /// Bytes of one position's K (or V) row: kv_dim * element size.
  std::size_t row_bytes() const { return row_bytes_; }
  /// The block table of `id` (block indices into the pool). Throws for unknown ids.
  std::span<const std::int32_t> block_table(seq_id id) const;
  /// K row of position `pos` of `layer`, given a block table from block_table().
  std::byte* k_row(std::span<const std::int32_t> table, int layer, int pos) const {
    return row_at(table, layer, pos, 0);
  }
  std::byte* v_row(std::span<const std::int32_t> table, int layer, int pos) const {
    return row_at(table, layer, pos, 1);
  }
  /// Records that positions [pos_begin, pos_end) of `layer` were written. Throws
  /// engine_error(invalid_argument) when pos_begin > layer_length (a gap) and out_of_capacity
  /// when pos_end > seq_capacity. `truncate`: the new length is pos_end (recompute: later
  /// positions are stale); otherwise max(length, pos_end) (idempotent re-import).
  void note_written(seq_id id, int layer, int pos_begin, int pos_end, bool truncate);

private:
  struct seq_state {
    std::vector<std::int32_t> blocks; ///< reserved to the most a sequence can need
    std::vector<int> layer_len;       ///< [layers] positions written per held layer
  };
  const seq_state& find(seq_id id) const;
  seq_state& find(seq_id id);
  std::byte* row_at(std::span<const std::int32_t> table, int layer, int pos, int kv) const {
    auto block = static_cast<std::size_t>(table[static_cast<std::size_t>(pos / bt_)]);
    auto in_block =
        static_cast<std::size_t>(((layer - config_.first_layer) * 2 + kv) * bt_ + pos % bt_);
    return pool_.data() + block * block_bytes_ + in_block * row_bytes_;
  }

  kv_cache_config config_;
  int bt_;
  std::size_t row_bytes_;
  std::size_t block_bytes_;
  huge_page_memory pool_; ///< [blocks_max][block_bytes]
  std::vector<std::int32_t> free_blocks_;
  std::unordered_map<seq_id, seq_state> seqs_;
};

} // namespace duet::engine
