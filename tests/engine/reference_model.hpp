#pragma once

// An independent scalar reference for the engine tests: llama2.c run.c's forward() transcribed
// plainly (own file reading, own KV arrays, no engine code), used to check the optimized engine
// token for token.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace duet::test {

struct reference_model {
  int dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
  bool shared;
  std::vector<float> data; // every float after the header
  // offsets (in floats) into data, run.c's memory_map_weights
  const float *token_embedding_table, *rms_att_weight, *wq, *wk, *wv, *wo, *rms_ffn_weight, *w1,
      *w2, *w3, *rms_final_weight, *wcls;
  // run state, as run.c's RunState
  std::vector<float> x, xb, xb2, hb, hb2, q, att, logits, key_cache, value_cache;

  explicit reference_model(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error("cannot open " + path);
    std::int32_t h[7];
    f.read(reinterpret_cast<char*>(h), sizeof h);
    dim = h[0], hidden_dim = h[1], n_layers = h[2], n_heads = h[3], n_kv_heads = h[4];
    shared = h[5] > 0;
    vocab_size = std::abs(h[5]);
    seq_len = h[6];
    f.seekg(0, std::ios::end);
    auto bytes = static_cast<std::size_t>(f.tellg()) - sizeof h;
    data.resize(bytes / 4);
    f.seekg(sizeof h);
    f.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(bytes));
    int head_size = dim / n_heads;
    auto L = static_cast<std::size_t>(n_layers);
    auto D = static_cast<std::size_t>(dim), H = static_cast<std::size_t>(hidden_dim);
    auto KVD = static_cast<std::size_t>(n_kv_heads * head_size);
    const float* ptr = data.data();
    token_embedding_table = ptr;
    ptr += static_cast<std::size_t>(vocab_size) * D;
    rms_att_weight = ptr;
    ptr += L * D;
    wq = ptr;
    ptr += L * D * D;
    wk = ptr;
    ptr += L * D * KVD;
    wv = ptr;
    ptr += L * D * KVD;
    wo = ptr;
    ptr += L * D * D;
    rms_ffn_weight = ptr;
    ptr += L * D;
    w1 = ptr;
    ptr += L * D * H;
    w2 = ptr;
    ptr += L * H * D;
    w3 = ptr;
    ptr += L * D * H;
    rms_final_weight = ptr;
    ptr += D;
    ptr += static_cast<std::size_t>(seq_len * head_size / 2);
    ptr += static_cast<std::size_t>(seq_len * head_size / 2);
    wcls = shared ? token_embedding_table : ptr;
    x.resize(D), xb.resize(D), xb2.resize(D), hb.resize(H), hb2.resize(H), q.resize(D);
    att.resize(static_cast<std::size_t>(n_heads * seq_len));
    logits.resize(static_cast<std::size_t>(vocab_size));
    key_cache.resize(L * static_cast<std::size_t>(seq_len) * KVD);
    value_cache.resize(L * static_cast<std::size_t>(seq_len) * KVD);
  }

  static void rmsnorm(float* o, const float* x, const float* weight, int size) {
    float ss = 0.0f;
    for (int j = 0; j < size; j++) ss += x[j] * x[j];
    ss /= static_cast<float>(size);
    ss += 1e-5f;
    ss = 1.0f / std::sqrt(ss);
    for (int j = 0; j < size; j++) o[j] = weight[j] * (ss * x[j]);
  }

  static void softmax(float* x, int size) {
    float max_val = x[0];
    for (int i = 1; i < size; i++)
      if (x[i] > max_val) max_val = x[i];
    float sum = 0.0f;
    for (int i = 0; i < size; i++) {
      x[i] = std::exp(x[i] - max_val);
      sum += x[i];
    }
    for (int i = 0; i < size; i++) x[i] /= sum;
  }

  static void matmul(float* xout, const float* x, const float* w, int n, int d) {
    for (int i = 0; i < d; i++) {
      float val = 0.0f;
      for (int j = 0; j < n; j++) val += w[static_cast<std::size_t>(i) * n + j] * x[j];
      xout[i] = val;
    }
  }

  /// run.c forward(): logits of `token` at `pos`.
  const std::vector<float>& forward(int token, int pos) {
    int kv_dim = (dim * n_kv_heads) / n_heads;
    int kv_mul = n_heads / n_kv_heads;
    int head_size = dim / n_heads;
    auto D = static_cast<std::size_t>(dim);
    std::memcpy(x.data(), token_embedding_table + static_cast<std::size_t>(token) * D, D * 4);
    for (int l = 0; l < n_layers; l++) {
      auto ul = static_cast<std::size_t>(l);
      rmsnorm(xb.data(), x.data(), rms_att_weight + ul * D, dim);
      std::size_t loff = ul * static_cast<std::size_t>(seq_len * kv_dim);
      float* k = key_cache.data() + loff + static_cast<std::size_t>(pos * kv_dim);
      float* v = value_cache.data() + loff + static_cast<std::size_t>(pos * kv_dim);
      matmul(q.data(), xb.data(), wq + ul * D * D, dim, dim);
      matmul(k, xb.data(), wk + ul * D * static_cast<std::size_t>(kv_dim), dim, kv_dim);
      matmul(v, xb.data(), wv + ul * D * static_cast<std::size_t>(kv_dim), dim, kv_dim);
      for (int i = 0; i < dim; i += 2) {
        int head_dim = i % head_size;
        float freq =
            1.0f / powf(10000.0f, static_cast<float>(head_dim) / static_cast<float>(head_size));
        float val = static_cast<float>(pos) * freq;
        float fcr = cosf(val);
        float fci = sinf(val);
        int rotn = i < kv_dim ? 2 : 1;
        for (int vi = 0; vi < rotn; vi++) {
          float* vec = vi == 0 ? q.data() : k;
          float v0 = vec[i];
          float v1 = vec[i + 1];
          vec[i] = v0 * fcr - v1 * fci;
          vec[i + 1] = v0 * fci + v1 * fcr;
        }
      }
      for (int h = 0; h < n_heads; h++) {
        float* qh = q.data() + h * head_size;
        float* atth = att.data() + h * seq_len;
        for (int t = 0; t <= pos; t++) {
          float* kt = key_cache.data() + loff +
                      static_cast<std::size_t>(t * kv_dim + (h / kv_mul) * head_size);
          float score = 0.0f;
          for (int i = 0; i < head_size; i++) score += qh[i] * kt[i];
          score /= std::sqrt(static_cast<float>(head_size));
          atth[t] = score;
        }
        softmax(atth, pos + 1);
        float* xbh = xb.data() + h * head_size;
        std::memset(xbh, 0, static_cast<std::size_t>(head_size) * sizeof(float));
        for (int t = 0; t <= pos; t++) {
          float* vt = value_cache.data() + loff +
                      static_cast<std::size_t>(t * kv_dim + (h / kv_mul) * head_size);
          float a = atth[t];
          for (int i = 0; i < head_size; i++) xbh[i] += a * vt[i];
        }
      }
      matmul(xb2.data(), xb.data(), wo + ul * D * D, dim, dim);
      for (int i = 0; i < dim; i++)
        x[static_cast<std::size_t>(i)] += xb2[static_cast<std::size_t>(i)];
      rmsnorm(xb.data(), x.data(), rms_ffn_weight + ul * D, dim);
      auto H = static_cast<std::size_t>(hidden_dim);
      matmul(hb.data(), xb.data(), w1 + ul * D * H, dim, hidden_dim);
      matmul(hb2.data(), xb.data(), w3 + ul * D * H, dim, hidden_dim);
      for (int i = 0; i < hidden_dim; i++) {
        float val = hb[static_cast<std::size_t>(i)];
        val *= (1.0f / (1.0f + std::exp(-val)));
        val *= hb2[static_cast<std::size_t>(i)];
        hb[static_cast<std::size_t>(i)] = val;
      }
      matmul(xb.data(), hb.data(), w2 + ul * D * H, hidden_dim, dim);
      for (int i = 0; i < dim; i++)
        x[static_cast<std::size_t>(i)] += xb[static_cast<std::size_t>(i)];
    }
    rmsnorm(x.data(), x.data(), rms_final_weight, dim);
    matmul(logits.data(), x.data(), wcls, dim, vocab_size);
    return logits;
  }

  static int argmax(const std::vector<float>& v) {
    int best = 0;
    for (std::size_t i = 1; i < v.size(); i++)
      if (v[i] > v[static_cast<std::size_t>(best)]) best = static_cast<int>(i);
    return best;
  }

  /// run.c generate() at temperature 0: the prompt tokens (BOS first), then greedy tokens
  /// until `steps` positions or a BOS. Returns every token after the first (prompt + generated).
  std::vector<int> generate_greedy(const std::vector<int>& prompt, int steps) {
    std::vector<int> out;
    int token = prompt[0];
    int pos = 0;
    while (pos < steps) {
      const auto& lg = forward(token, pos);
      int next = pos < static_cast<int>(prompt.size()) - 1
                     ? prompt[static_cast<std::size_t>(pos + 1)]
                     : argmax(lg);
      pos++;
      if (next == 1) break;
      out.push_back(next);
      token = next;
    }
    return out;
  }
};

} // namespace duet::test
