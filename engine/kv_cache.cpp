#include "engine/kv_cache.hpp"

#include "engine/error.hpp"

#include <algorithm>
#include <limits>
#include <string>

namespace duet::engine {

namespace {

[[noreturn]] void invalid(const std::string& msg) {
  throw engine_error(engine_errc::invalid_argument, "kv_cache: " + msg);
}

std::string seq_name(seq_id id) {
  return "sequence " + std::to_string(id);
}

} // namespace

kv_cache_config kv_cache_config::for_model(const model_config& model, int first_layer,
                                           int last_layer, std::size_t blocks_max, dtype type,
                                           int block_tokens) {
  kv_cache_config c;
  c.first_layer = first_layer;
  c.last_layer = last_layer;
  c.n_kv_heads = model.n_kv_heads;
  c.head_size = model.head_size();
  c.seq_len_max = model.seq_len;
  c.block_tokens = block_tokens;
  c.blocks_max = blocks_max;
  c.type = type;
  return c;
}

std::size_t kv_cache_config::blocks_for(int n_sequences) const {
  if (block_tokens <= 0 || n_sequences <= 0) return 0;
  auto per_seq = static_cast<std::size_t>((seq_len_max + block_tokens - 1) / block_tokens);
  return per_seq * static_cast<std::size_t>(n_sequences);
}

kv_cache::kv_cache(const kv_cache_config& config) : config_(config), bt_(config.block_tokens) {
  const auto& c = config_;
  if (c.first_layer < 0 || c.last_layer <= c.first_layer)
    invalid("empty layer range [" + std::to_string(c.first_layer) + ", " +
            std::to_string(c.last_layer) + ")");
  if (c.type != dtype::f32 && c.type != dtype::f16)
    invalid("KV dtype " + std::string(dtype_name(c.type)) + " unsupported (f32 or f16)");
  if (c.n_kv_heads <= 0 || c.head_size <= 0 || c.seq_len_max <= 0 || c.block_tokens <= 0)
    invalid("n_kv_heads, head_size, seq_len_max and block_tokens must be positive");
  if (c.blocks_max == 0) invalid("blocks_max is 0");
  if (c.blocks_max > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()))
    invalid("blocks_max " + std::to_string(c.blocks_max) + " exceeds int32");
  row_bytes_ = static_cast<std::size_t>(c.kv_dim()) * (c.type == dtype::f32 ? 4 : 2);
  block_bytes_ =
      static_cast<std::size_t>(c.layers()) * 2 * static_cast<std::size_t>(bt_) * row_bytes_;
  if (c.blocks_max > std::numeric_limits<std::size_t>::max() / 2 / block_bytes_)
    throw engine_error(engine_errc::out_of_capacity, "kv_cache: pool size overflows");
  // Pages are faulted in only when blocks are written; on huge pages (engine/huge_page_memory:
  // batched decode into fresh 4 KiB pages spent 5% of its time faulting, and 2 MiB pages give
  // attention's scattered block reads more TLB reach).
  pool_ = huge_page_memory(block_bytes_ * c.blocks_max, "the KV pool", "lower blocks_max");
  free_blocks_.resize(c.blocks_max);
  // Stack of free blocks; lowest index on top so a fresh cache fills the pool front to back.
  for (std::size_t i = 0; i < c.blocks_max; ++i)
    free_blocks_[i] = static_cast<std::int32_t>(c.blocks_max - 1 - i);
}

const kv_cache::seq_state& kv_cache::find(seq_id id) const {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) invalid("unknown " + seq_name(id));
  return it->second;
}

kv_cache::seq_state& kv_cache::find(seq_id id) {
  return const_cast<seq_state&>(static_cast<const kv_cache*>(this)->find(id));
}

bool kv_cache::seq_add(seq_id id) {
  if (seqs_.count(id) != 0) return false;
  seq_state s;
  s.blocks.reserve(config_.blocks_for(1));
  s.layer_len.assign(static_cast<std::size_t>(config_.layers()), 0);
  seqs_.emplace(id, std::move(s));
  return true;
}

bool kv_cache::seq_reserve(seq_id id, int n_tokens) {
  auto& s = find(id);
  if (n_tokens < 0 || n_tokens > config_.seq_len_max)
    invalid(seq_name(id) + ": cannot reserve " + std::to_string(n_tokens) +
            " positions (seq_len_max " + std::to_string(config_.seq_len_max) + ")");
  auto need = static_cast<std::size_t>((n_tokens + bt_ - 1) / bt_);
  if (need <= s.blocks.size()) return true;
  if (need - s.blocks.size() > free_blocks_.size()) return false;
  while (s.blocks.size() < need) {
    s.blocks.push_back(free_blocks_.back());
    free_blocks_.pop_back();
  }
  return true;
}

bool kv_cache::seq_free(seq_id id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return false;
  // Returned in reverse so the stack hands them out again in the same order.
  for (auto b = it->second.blocks.rbegin(); b != it->second.blocks.rend(); ++b)
    free_blocks_.push_back(*b);
  seqs_.erase(it);
  return true;
}

void kv_cache::seq_truncate(seq_id id, int n_tokens) {
  auto& s = find(id);
  if (n_tokens < 0) invalid(seq_name(id) + ": truncate to " + std::to_string(n_tokens));
  for (auto& len : s.layer_len) len = std::min(len, n_tokens);
}

int kv_cache::seq_length(seq_id id) const {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return 0;
  return *std::min_element(it->second.layer_len.begin(), it->second.layer_len.end());
}

int kv_cache::layer_length(seq_id id, int layer) const {
  const auto& s = find(id);
  if (!holds_layer(layer))
    invalid("layer " + std::to_string(layer) + " not held (cache holds [" +
            std::to_string(config_.first_layer) + ", " + std::to_string(config_.last_layer) + "))");
  return s.layer_len[static_cast<std::size_t>(layer - config_.first_layer)];
}

int kv_cache::seq_capacity(seq_id id) const {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return 0;
  return static_cast<int>(it->second.blocks.size()) * bt_;
}

std::span<const std::int32_t> kv_cache::block_table(seq_id id) const {
  return find(id).blocks;
}

void kv_cache::note_written(seq_id id, int layer, int pos_begin, int pos_end, bool truncate) {
  auto& s = find(id);
  (void)layer_length(id, layer); // validates the layer
  int& len = s.layer_len[static_cast<std::size_t>(layer - config_.first_layer)];
  if (pos_begin < 0 || pos_end < pos_begin || pos_begin > len)
    invalid(seq_name(id) + " layer " + std::to_string(layer) + ": write of positions [" +
            std::to_string(pos_begin) + ", " + std::to_string(pos_end) +
            ") leaves a gap after length " + std::to_string(len));
  if (pos_end > static_cast<int>(s.blocks.size()) * bt_)
    throw engine_error(engine_errc::out_of_capacity,
                       "kv_cache: " + seq_name(id) + " has blocks for " +
                           std::to_string(s.blocks.size() * static_cast<std::size_t>(bt_)) +
                           " positions, write reaches " + std::to_string(pos_end) +
                           " (call seq_reserve first)");
  len = truncate ? pos_end : std::max(len, pos_end);
}

} // namespace duet::engine
