// The forward pass over a paged KV cache, after llama2.c run.c's forward(), for many rows at
// once: a row is (sequence, position, hidden state). Prefill rows share one sequence at
// consecutive positions; decode rows are one token each of distinct sequences.
#include "engine/forward.hpp"

#include "engine/error.hpp"
#include "engine/kernels.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

namespace duet::engine {

namespace {

[[noreturn]] void invalid(const std::string& msg) {
  throw engine_error(engine_errc::invalid_argument, "runner: " + msg);
}

void check_tensor(const std::string& name, const tensor_view& t, std::int64_t rows,
                  std::int64_t cols, bool f32_only) {
  if (t.data == nullptr) invalid("model tensor " + name + " is missing");
  if (t.rows != rows || t.cols != cols)
    invalid("model tensor " + name + " is [" + std::to_string(t.rows) + "][" +
            std::to_string(t.cols) + "], expected [" + std::to_string(rows) + "][" +
            std::to_string(cols) + "]");
  if (f32_only && t.type != dtype::f32)
    throw engine_error(engine_errc::unsupported, "runner: norm tensor " + name + " is " +
                                                     std::string(dtype_name(t.type)) +
                                                     ", expected f32");
  if (t.type == dtype::q8_0 && cols % 32 != 0)
    invalid("q8_0 tensor " + name + " has " + std::to_string(cols) +
            " columns, not a multiple of 32");
}

/// Floats per row of a worker's score scratch: seq_len and one line more, so that the rows of
/// a slab do not all fall in the same cache sets (at a power-of-two seq_len, 1024 positions
/// are 4 KiB apart).
std::int64_t att_row_floats(int seq_len) {
  return seq_len + 16;
}

/// Rows of a prefill chunk per attention_rows call, whose scores the worker's scratch holds:
/// as many as fit in 64 Ki floats (256 KiB; 64 rows at 1024 positions), at least 4 (8 MiB per
/// worker at a context of 512 Ki positions), at most tokens_max.
int attention_slab(int seq_len, int tokens_max) {
  const auto fit = static_cast<int>(65536 / att_row_floats(seq_len));
  return std::min(tokens_max, std::max(4, fit));
}

} // namespace

/// Every buffer the forward pass touches, sized once for tokens_max rows.
struct runner::workspace {
  std::vector<float> x;        ///< [T][dim]   decode_batch's hidden states
  std::vector<float> xb;       ///< [T][dim]   normed input / matmul output
  std::vector<float> xb2;      ///< [T][dim]   attention output (before wo)
  std::vector<float> qkv;      ///< [T][dim + 2 * kv_dim]  q | k | v per row
  std::vector<float> hb;       ///< [T][2 * hidden_dim]    w1 x | w3 x per row
  std::vector<float> att;      ///< [threads][attention_slab][att_row_floats]  scores per worker
  std::vector<float> rope;     ///< [seq_len][head_size/2][2]  cos, sin
  std::vector<seq_id> row_seq; ///< [T]
  std::vector<int> row_pos;    ///< [T]
  std::vector<std::span<const std::int32_t>> row_table; ///< [T] block tables
  kernels::matmul_input in; ///< the current matmul input, quantized once for every thread
};

runner::runner(const model_weights& weights, runner_options options)
    : weights_(weights), options_(options), pool_(options.threads) {
  const auto& c = weights_.config;
  if (options_.tokens_max < 1 || options_.tokens_max > 4096)
    invalid("tokens_max is " + std::to_string(options_.tokens_max) + ", expected 1..4096");
  if (c.dim <= 0 || c.n_heads <= 0 || c.n_kv_heads <= 0 || c.hidden_dim <= 0 || c.n_layers <= 0 ||
      c.vocab_size <= 0 || c.seq_len <= 0 || c.dim % c.n_heads != 0 ||
      c.n_heads % c.n_kv_heads != 0 || c.head_size() % 2 != 0)
    invalid("inconsistent model config");
  if (static_cast<int>(weights_.layers.size()) != c.n_layers)
    invalid("model has " + std::to_string(weights_.layers.size()) + " layers, config says " +
            std::to_string(c.n_layers));
  const std::int64_t D = c.dim, KV = c.kv_dim(), H = c.hidden_dim, V = c.vocab_size;
  check_tensor("token_embedding", weights_.token_embedding, V, D, false);
  check_tensor("rms_final", weights_.rms_final, 1, D, true);
  check_tensor("classifier", weights_.classifier, V, D, false);
  for (int l = 0; l < c.n_layers; ++l) {
    const auto& lw = weights_.layers[static_cast<std::size_t>(l)];
    auto n = [l](const char* t) { return "layer " + std::to_string(l) + " " + t; };
    check_tensor(n("rms_att"), lw.rms_att, 1, D, true);
    check_tensor(n("wq"), lw.wq, D, D, false);
    check_tensor(n("wk"), lw.wk, KV, D, false);
    check_tensor(n("wv"), lw.wv, KV, D, false);
    check_tensor(n("wo"), lw.wo, D, D, false);
    check_tensor(n("rms_ffn"), lw.rms_ffn, 1, D, true);
    check_tensor(n("w1"), lw.w1, H, D, false);
    check_tensor(n("w2"), lw.w2, D, H, false);
    check_tensor(n("w3"), lw.w3, H, D, false);
  }
  auto T = static_cast<std::size_t>(options_.tokens_max);
  auto u = [](std::int64_t v) { return static_cast<std::size_t>(v); };
  ws_ = std::make_unique<workspace>();
  ws_->x.resize(T * u(D));
  ws_->xb.resize(T * u(D));
  ws_->xb2.resize(T * u(D));
  ws_->qkv.resize(T * u(D + 2 * KV));
  ws_->hb.resize(T * u(2 * H));
  ws_->att.resize(u(pool_.threads()) * u(attention_slab(c.seq_len, options_.tokens_max)) *
                  u(att_row_floats(c.seq_len)));
  ws_->rope.resize(u(c.seq_len) * u(c.head_size()));
  kernels::rope_table(ws_->rope.data(), c.seq_len, c.head_size(), c.rope_theta);
  ws_->row_seq.resize(T);
  ws_->row_pos.resize(T);
  ws_->row_table.resize(T);
}

runner::~runner() = default;

void runner::embed(std::span<const int> tokens, std::span<float> x) const {
  const auto dim = static_cast<std::size_t>(config().dim);
  if (x.size() < tokens.size() * dim)
    invalid("embed: output has " + std::to_string(x.size()) + " floats, need " +
            std::to_string(tokens.size() * dim));
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= config().vocab_size)
      invalid("embed: token " + std::to_string(tokens[i]) + " outside the vocabulary of " +
              std::to_string(config().vocab_size));
    kernels::dequantize_row(weights_.token_embedding, tokens[i], x.data() + i * dim);
  }
}

void runner::check_batch(const kv_cache& kv, int first_layer, int last_layer) const {
  if (first_layer < 0 || last_layer > config().n_layers || first_layer >= last_layer)
    invalid("layer range [" + std::to_string(first_layer) + ", " + std::to_string(last_layer) +
            ") outside the model's " + std::to_string(config().n_layers) + " layers");
  const auto& kc = kv.config();
  if (!kv.holds_layer(first_layer) || !kv.holds_layer(last_layer - 1))
    invalid("kv cache holds layers [" + std::to_string(kc.first_layer) + ", " +
            std::to_string(kc.last_layer) + "), forward needs [" + std::to_string(first_layer) +
            ", " + std::to_string(last_layer) + ")");
  if (kc.n_kv_heads != config().n_kv_heads || kc.head_size != config().head_size())
    throw engine_error(engine_errc::mismatch,
                       "runner: kv cache shape " + std::to_string(kc.n_kv_heads) + " x " +
                           std::to_string(kc.head_size) + " does not match the model's " +
                           std::to_string(config().n_kv_heads) + " x " +
                           std::to_string(config().head_size()));
}

void runner::forward_layers(kv_cache& kv, seq_id seq, int pos0, int n_tokens, int first_layer,
                            int last_layer, std::span<float> x) {
  check_batch(kv, first_layer, last_layer);
  const auto dim = static_cast<std::size_t>(config().dim);
  if (n_tokens < 0 || x.size() < static_cast<std::size_t>(n_tokens) * dim)
    invalid("forward_layers: " + std::to_string(n_tokens) + " tokens need " +
            std::to_string(static_cast<std::size_t>(std::max(n_tokens, 0)) * dim) +
            " floats, got " + std::to_string(x.size()));
  if (n_tokens == 0) return;
  if (!kv.has_seq(seq)) invalid("forward_layers: unknown sequence " + std::to_string(seq));
  if (pos0 < 0 || pos0 + n_tokens > config().seq_len)
    invalid("forward_layers: positions [" + std::to_string(pos0) + ", " +
            std::to_string(pos0 + n_tokens) + ") outside the context of " +
            std::to_string(config().seq_len));
  for (int l = first_layer; l < last_layer; ++l)
    if (kv.layer_length(seq, l) < pos0)
      invalid("forward_layers: sequence " + std::to_string(seq) + " layer " + std::to_string(l) +
              " has " + std::to_string(kv.layer_length(seq, l)) + " positions, write at " +
              std::to_string(pos0) + " would leave a gap");
  if (kv.seq_capacity(seq) < pos0 + n_tokens)
    throw engine_error(engine_errc::out_of_capacity,
                       "runner: sequence " + std::to_string(seq) + " has blocks for " +
                           std::to_string(kv.seq_capacity(seq)) + " positions, needs " +
                           std::to_string(pos0 + n_tokens) + " (seq_reserve first)");
  auto table = kv.block_table(seq);
  for (int done = 0; done < n_tokens; done += options_.tokens_max) {
    int n = std::min(options_.tokens_max, n_tokens - done);
    for (int i = 0; i < n; ++i) {
      auto si = static_cast<std::size_t>(i);
      ws_->row_seq[si] = seq;
      ws_->row_pos[si] = pos0 + done + i;
      ws_->row_table[si] = table;
    }
    layers_chunk(kv, n, first_layer, last_layer, x.data() + static_cast<std::size_t>(done) * dim,
                 true);
    for (int l = first_layer; l < last_layer; ++l)
      kv.note_written(seq, l, pos0 + done, pos0 + done + n, true);
  }
}

void runner::layers_chunk(kv_cache& kv, int n, int first_layer, int last_layer, float* x,
                          bool one_sequence) {
  const auto& c = config();
  const int D = c.dim, KV = c.kv_dim(), H = c.hidden_dim, hs = c.head_size();
  const int QKV = D + 2 * KV;
  const int kv_mul = c.n_heads / c.n_kv_heads;
  const bool f16_kv = kv.config().type == dtype::f16;
  auto& ws = *ws_;
  float* xb = ws.xb.data();
  float* xb2 = ws.xb2.data();
  float* qkv = ws.qkv.data();
  float* hb = ws.hb.data();
  kernels::matmul_input& in = ws.in;
  auto row = [](float* base, int i, int stride) {
    return base + static_cast<std::ptrdiff_t>(i) * stride;
  };
  auto q8 = [](const tensor_view& w) { return w.type == dtype::q8_0; };
  // The row-wise steps (norms, RoPE and the cache writes, SwiGLU, residuals, quantizing a matmul
  // input) run on the pool too once there are a few rows (each_row): on one thread they left the
  // other waiting (stories110M q8_0, 2 threads: ~7% of samples, with the pool's spinning worker
  // beside them). Each row's arithmetic is the same either way. Measured with the matmul inputs
  // quantized once (duet bench engine, 2 threads, old and new binaries alternated): prefill 128
  // 1538-1551 -> 1768-1796 tok/s, 32 sequences 855-857 -> 994-1143; 1 thread unchanged.

  // x += xb still owed from the previous layer's FFN: applied in the next row-wise pass.
  bool residual_pending = false;

  for (int l = first_layer; l < last_layer; ++l) {
    const auto& lw = weights_.layers[static_cast<std::size_t>(l)];
    const auto* rms_att = static_cast<const float*>(lw.rms_att.data);
    const auto* rms_ffn = static_cast<const float*>(lw.rms_ffn.data);

    // -- attention ---------------------------------------------------------------------------
    in.reset(xb, D, n, D, q8(lw.wq) || q8(lw.wk) || q8(lw.wv));
    each_rows(n, [&, pending = residual_pending](int b, int e) {
      if (pending)
        for (int i = b; i < e; ++i) kernels::add_to(row(x, i, D), row(xb, i, D), D);
      kernels::rmsnorm_rows(row(xb, b, D), row(x, b, D), D, e - b, rms_att, D, c.rms_eps);
      in.quantize_rows(b, e);
    });
    residual_pending = false;
    // q, k and v in one parallel pass over their concatenated output rows.
    pool_.parallel_for(QKV, [&](std::int64_t b, std::int64_t e, int) {
      auto part = [&](const tensor_view& w, std::int64_t off) {
        std::int64_t lo = std::max(b, off) - off, hi = std::min(e, off + w.rows) - off;
        if (lo < hi) kernels::matmul(w, in, qkv + off, QKV, lo, hi);
      };
      part(lw.wq, 0);
      part(lw.wk, D);
      part(lw.wv, D + KV);
    });
    // RoPE, then this chunk's K and V into the cache (before attention: rows attend to each
    // other causally within the chunk). Rows write distinct positions.
    each_row(n, [&](int i) {
      float* q = row(qkv, i, QKV);
      const int pos = ws.row_pos[static_cast<std::size_t>(i)];
      const float* rt =
          ws.rope.data() + static_cast<std::size_t>(pos) * static_cast<std::size_t>(hs);
      kernels::rope(q, D, hs, rt);
      kernels::rope(q + D, KV, hs, rt);
      auto table = ws.row_table[static_cast<std::size_t>(i)];
      std::byte* kr = kv.k_row(table, l, pos);
      std::byte* vr = kv.v_row(table, l, pos);
      if (f16_kv) {
        kernels::f32_to_f16_row(q + D, reinterpret_cast<std::uint16_t*>(kr), KV);
        kernels::f32_to_f16_row(q + D + KV, reinterpret_cast<std::uint16_t*>(vr), KV);
      } else {
        std::memcpy(kr, q + D, static_cast<std::size_t>(KV) * 4);
        std::memcpy(vr, q + D + KV, static_cast<std::size_t>(KV) * 4);
      }
    });
    // Head-major: a task is one head's rows of the chunk (up to a slab of them), which
    // all read the same sequence's K and V of that head; row-major order cycled through every
    // head's K and V per row (3 MB per layer at 512 positions of stories110M, past L2). Measured
    // (duet bench engine, stories110M q8_0, 1 thread, old and new binaries alternated):
    // head-major alone, prefill 512 1148-1204 -> 1247-1251 tok/s. attention_rows takes the rows
    // together: it loads each K and V row once for several query rows, and on AVX-512 turns K
    // into columns once for the call.
    const std::int64_t att_stride = att_row_floats(c.seq_len);
    const int slab = attention_slab(c.seq_len, options_.tokens_max);
    const auto att_per_worker = static_cast<std::size_t>(slab * att_stride);
    if (one_sequence) {
      const int slabs = (n + slab - 1) / slab;
      pool_.parallel_for(
          static_cast<std::int64_t>(slabs) * c.n_heads,
          [&](std::int64_t b, std::int64_t e, int worker) {
            float* att = ws.att.data() + static_cast<std::size_t>(worker) * att_per_worker;
            for (std::int64_t it = b; it < e; ++it) {
              const int i = static_cast<int>(it % slabs) * slab;
              const int h = static_cast<int>(it / slabs);
              const auto si = static_cast<std::size_t>(i);
              kernels::attention_rows(row(qkv, i, QKV) + h * hs, QKV, kv, ws.row_table[si], l,
                                      h / kv_mul, ws.row_pos[si] + 1, std::min(slab, n - i), att,
                                      att_stride, row(xb2, i, D) + h * hs, D);
            }
          });
    } else {
      // Rows of different sequences (batched decode): sequence-major, consecutive tasks are
      // the heads of one row, which read neighbouring lines of the same K and V rows (a head is
      // 256 of a row's 3072 bytes in stories110M f32). Head-major order walked every sequence's
      // rows once per head. Measured (a scratch program timing 16 steps of 32 sequences from 64
      // positions, stories110M q8_0, 1 thread, the Xeon VM of 2026-11-29, old and new
      // alternated): 752-764 -> 801-811 tok/s; duet bench engine 682-705 -> 728-753. What is
      // left is the bytes: at 64-80 positions the 32 sequences' f32 K and V are 170 MB a step,
      // more than the weights (116 MB), read at about the bandwidth.
      pool_.parallel_for(static_cast<std::int64_t>(n) * c.n_heads, [&](std::int64_t b,
                                                                       std::int64_t e, int worker) {
        float* att = ws.att.data() + static_cast<std::size_t>(worker) * att_per_worker;
        for (std::int64_t it = b; it < e; ++it) {
          const int i = static_cast<int>(it / c.n_heads);
          const int h = static_cast<int>(it % c.n_heads);
          const auto si = static_cast<std::size_t>(i);
          kernels::attention(row(qkv, i, QKV) + h * hs, kv, ws.row_table[si], l, h / kv_mul,
                             ws.row_pos[si] + 1, att, row(xb2, i, D) + h * hs);
        }
      });
    }
    in.reset(xb2, D, n, D, q8(lw.wo));
    if (in.quantized()) each_row(n, [&](int i) { in.quantize_rows(i, i + 1); });
    pool_.parallel_for(
        D, [&](std::int64_t b, std::int64_t e, int) { kernels::matmul(lw.wo, in, xb, D, b, e); });

    // -- feed-forward (SwiGLU) ---------------------------------------------------------------
    // xb is overwritten in place by the norm: the residual x += wo's output comes first.
    in.reset(xb, D, n, D, q8(lw.w1) || q8(lw.w3));
    each_rows(n, [&](int b, int e) {
      for (int i = b; i < e; ++i) kernels::add_to(row(x, i, D), row(xb, i, D), D);
      kernels::rmsnorm_rows(row(xb, b, D), row(x, b, D), D, e - b, rms_ffn, D, c.rms_eps);
      in.quantize_rows(b, e);
    });
    pool_.parallel_for(2 * H, [&](std::int64_t b, std::int64_t e, int) {
      auto part = [&](const tensor_view& w, std::int64_t off) {
        std::int64_t lo = std::max(b, off) - off, hi = std::min(e, off + w.rows) - off;
        if (lo < hi) kernels::matmul(w, in, hb + off, 2 * H, lo, hi);
      };
      part(lw.w1, 0);
      part(lw.w3, H);
    });
    in.reset(hb, 2 * H, n, H, q8(lw.w2)); // the gated half of hb
    each_row(n, [&](int i) {
      float* h1 = row(hb, i, 2 * H);
      kernels::silu_mul(h1, h1 + H, H);
      in.quantize_rows(i, i + 1);
    });
    pool_.parallel_for(
        D, [&](std::int64_t b, std::int64_t e, int) { kernels::matmul(lw.w2, in, xb, D, b, e); });
    residual_pending = true;
  }
  if (residual_pending)
    each_row(n, [&](int i) { kernels::add_to(row(x, i, D), row(xb, i, D), D); });
}

void runner::logits(std::span<const float> x, std::span<float> out) {
  const auto& c = config();
  const auto D = static_cast<std::size_t>(c.dim), V = static_cast<std::size_t>(c.vocab_size);
  std::size_t rows = x.size() / D;
  if (x.size() % D != 0 || out.size() < rows * V)
    invalid("logits: " + std::to_string(x.size()) + " inputs (need a multiple of " +
            std::to_string(D) + ") and " + std::to_string(out.size()) + " outputs (need " +
            std::to_string(rows * V) + ")");
  const auto* rms = static_cast<const float*>(weights_.rms_final.data);
  for (std::size_t done = 0; done < rows; done += static_cast<std::size_t>(options_.tokens_max)) {
    int n = static_cast<int>(std::min(rows - done, static_cast<std::size_t>(options_.tokens_max)));
    float* xb = ws_->xb.data();
    auto& in = ws_->in;
    in.reset(xb, c.dim, n, c.dim, weights_.classifier.type == dtype::q8_0);
    each_rows(n, [&](int b, int e) {
      const auto r = static_cast<std::size_t>(b);
      kernels::rmsnorm_rows(xb + r * D, x.data() + (done + r) * D, D, e - b, rms, c.dim, c.rms_eps);
      in.quantize_rows(b, e);
    });
    float* o = out.data() + done * V;
    pool_.parallel_for(c.vocab_size, [&](std::int64_t b, std::int64_t e, int) {
      kernels::matmul(weights_.classifier, in, o, c.vocab_size, b, e);
    });
  }
}

void runner::decode_batch(kv_cache& kv, std::span<const decode_item> items,
                          std::span<float> logits_out) {
  const auto& c = config();
  check_batch(kv, 0, c.n_layers);
  const auto V = static_cast<std::size_t>(c.vocab_size), D = static_cast<std::size_t>(c.dim);
  if (logits_out.size() < items.size() * V)
    invalid("decode_batch: logits output has " + std::to_string(logits_out.size()) +
            " floats, need " + std::to_string(items.size() * V));
  // Validate every item before touching the cache.
  for (std::size_t i = 0; i < items.size(); ++i) {
    const auto& it = items[i];
    auto name =
        "decode_batch: item " + std::to_string(i) + " (sequence " + std::to_string(it.seq) + ")";
    if (!kv.has_seq(it.seq)) invalid(name + " is not in the cache");
    if (it.token < 0 || it.token >= c.vocab_size) invalid(name + " token out of range");
    if (it.pos < 0 || it.pos >= c.seq_len)
      invalid(name + " position " + std::to_string(it.pos) + " outside the context of " +
              std::to_string(c.seq_len));
    if (kv.seq_length(it.seq) < it.pos)
      invalid(name + " position " + std::to_string(it.pos) + " after a gap (length " +
              std::to_string(kv.seq_length(it.seq)) + ")");
    if (kv.seq_capacity(it.seq) <= it.pos)
      throw engine_error(engine_errc::out_of_capacity,
                         "runner: " + name + " has no block for position " +
                             std::to_string(it.pos) + " (seq_reserve first)");
    for (std::size_t j = 0; j < i; ++j)
      if (items[j].seq == it.seq) invalid(name + " appears twice in one batch");
  }
  auto T = static_cast<std::size_t>(options_.tokens_max);
  for (std::size_t done = 0; done < items.size(); done += T) {
    int n = static_cast<int>(std::min(items.size() - done, T));
    float* x = ws_->x.data();
    for (int i = 0; i < n; ++i) {
      const auto& it = items[done + static_cast<std::size_t>(i)];
      auto si = static_cast<std::size_t>(i);
      kernels::dequantize_row(weights_.token_embedding, it.token, x + si * D);
      ws_->row_seq[si] = it.seq;
      ws_->row_pos[si] = it.pos;
      ws_->row_table[si] = kv.block_table(it.seq);
    }
    layers_chunk(kv, n, 0, c.n_layers, x, false);
    for (int i = 0; i < n; ++i) {
      const auto& it = items[done + static_cast<std::size_t>(i)];
      for (int l = 0; l < c.n_layers; ++l) kv.note_written(it.seq, l, it.pos, it.pos + 1, true);
    }
    logits(std::span<const float>(x, static_cast<std::size_t>(n) * D),
           logits_out.subspan(done * V, static_cast<std::size_t>(n) * V));
  }
}

void runner::prefill(kv_cache& kv, seq_id seq, int pos0, std::span<const int> tokens,
                     std::span<float> last_logits) {
  const auto& c = config();
  const auto D = static_cast<std::size_t>(c.dim);
  if (tokens.empty()) invalid("prefill: no tokens");
  if (last_logits.size() < static_cast<std::size_t>(c.vocab_size))
    invalid("prefill: logits output too small");
  // Chunk by tokens_max through ws.x so prefill never allocates.
  std::size_t T = static_cast<std::size_t>(options_.tokens_max);
  for (std::size_t done = 0; done < tokens.size(); done += T) {
    std::size_t n = std::min(tokens.size() - done, T);
    std::span<float> x(ws_->x.data(), n * D);
    embed(tokens.subspan(done, n), x);
    forward_layers(kv, seq, pos0 + static_cast<int>(done), static_cast<int>(n), 0, c.n_layers, x);
    if (done + n == tokens.size())
      logits(std::span<const float>(x.data() + (n - 1) * D, D),
             last_logits.first(static_cast<std::size_t>(c.vocab_size)));
  }
}

} // namespace duet::engine
