#pragma once

// `duet bench engine`: the engine's prefill and decode throughput on one model file, next to
// this machine's memory read bandwidth measured in the same run. Decode of one sequence reads
// every weight once per token, so its ceiling (the roofline) is bandwidth / weight bytes per
// token; batched decode reads them once per step for the whole batch. Prefill and large batches
// are bound by arithmetic instead: the arithmetic peak, also measured in the same run, caps them
// at peak / (2 FLOP x weights) tokens per second — the f32 FMA peak, or for q8_0 weights the
// int8 multiply-add peak of the instructions its kernels use (vpdpbusd with VNNI).

#include "engine/dtype.hpp"
#include "engine/kv_dtype.hpp"

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace duet::bench {

struct engine_bench_options {
  std::string model;                            ///< .gguf or llama2.c .bin
  std::string tokenizer;                        ///< llama2.c tokenizer (for .bin)
  int threads = 1;                              ///< engine compute threads
  std::vector<int> prefill_tokens = {128, 512}; ///< prompt lengths (clamped to the context)
  std::vector<int> decode_batches = {1, 8, 32}; ///< concurrent sequences
  int decode_steps = 16;                        ///< timed decode steps per batch size
  /// Untimed decode steps before the timed ones, and an untimed run of each prefill before
  /// the timed one, so that a figure is the steady state a server runs in (the weights read
  /// step after step), as the read baseline is (the same bytes read over and over, best of 25
  /// passes). The VM's caches hold part of a model read over and over, and a decode warms up
  /// into that over tens of steps: stories110M q8_0 on the Xeon VM of 2026-11-29, a scratch
  /// program timing each step after a 64-token prompt, 6.5 ms for the first step and 3.6-3.9
  /// from the 25th on (2 threads; 1 thread 12.1 -> 9.3-9.6 ms). Without them the benchmark
  /// timed the first 16 steps after a 512-token prefill and the read baseline, which had
  /// pushed the weights out: 210 tok/s with 2 threads (53% of the roofline) where the later
  /// steps run at 345-374. 0: no warm-up (the figures before 2026-11-29's fifth session).
  int warmup_steps = 32;
  /// Each prefill and decode figure, and the read bandwidth, is measured this many times, in
  /// rounds (every figure once per round); the best round is reported (the mean next to it),
  /// as the arithmetic baselines report their best pass: on a shared VM one round can lose half
  /// its speed to a neighbour. The ratios are also given per round, between figures measured
  /// seconds apart.
  int rounds = 3;
  /// Position each decoding sequence's timed steps start from: its prompt is this many
  /// tokens less the warm-up steps (at least 1).
  int context_tokens = 64;
  /// K and V element type; auto (engine/kv_dtype.hpp): f32 for f32 weights, f16 for q8_0 or
  /// f16 ones, as every command defaults to.
  engine::kv_dtype_choice kv_dtype = engine::kv_dtype_choice::automatic;
  /// Working set of the read baseline; 0: the bytes one decode step reads (the weights), so
  /// that the roofline holds for the memory those bytes come from. A fixed 256 MiB measured
  /// DRAM on a Xeon whose 260 MiB L3 holds the whole 117 MB model: decode then ran at 140-217%
  /// of that "roofline".
  std::size_t bandwidth_bytes = 0;
  /// Told (fraction done 0..1, step name) between stages; may be empty. The command line shows
  /// it as a progress bar on a terminal, plain lines otherwise.
  std::function<void(double, std::string_view)> on_progress;
};

struct engine_bench_figure {
  int n = 0;                         ///< prompt tokens (prefill) or sequences (decode)
  std::vector<double> round_seconds; ///< one timing per round
  double tokens = 0.0; ///< tokens processed (prefill) or generated (decode) per timing
  /// Decode: K and V bytes the attention of one step reads for the whole batch, averaged over
  /// the timed steps (every sequence's positions so far, every layer). A batch reads them on
  /// top of the weights: 32 sequences at 64-80 positions of stories110M in f32 read 170 MB a
  /// step, more than the q8_0 weights.
  double kv_bytes_per_step = 0.0;

  double round_tokens_per_s(std::size_t round) const { return tokens / round_seconds[round]; }
  double tokens_per_s() const;      ///< the best round
  double mean_tokens_per_s() const; ///< over all rounds (total tokens / total time)
};

struct engine_bench_result {
  std::string model;
  std::string weight_types; ///< e.g. "q8_0" or "f32+f16"
  std::string simd;         ///< matmul kernel in use
  int threads = 0;
  int rounds = 1;                         ///< timings per prefill / decode figure
  int warmup_steps = 0;                   ///< untimed decode steps before the timed ones
  std::size_t weight_bytes_per_token = 0; ///< bytes one decode step reads (model_weights)
  double matmul_flop_per_token = 0.0;     ///< 2 x the weights of every matmul
  double classifier_flop = 0.0;           ///< the classifier's share of that
  std::vector<double> read_gbps_rounds;   ///< per round, with the same thread count
  std::size_t read_bytes = 0;             ///< the read baseline's working set
  double peak_gflops = 0.0;               ///< f32 FMA peak, same thread count
  /// int8 multiply-add peak (GOP/s) with the q8_0 kernels' instructions; 0 unless the matmul
  /// weights are all q8_0 (their ceiling is then this, not the f32 peak)
  double int8_gops = 0.0;
  std::vector<engine_bench_figure> prefill;
  std::vector<engine_bench_figure> decode;
  std::size_t kv_pool_bytes = 0;
  engine::dtype kv_type = engine::dtype::f32; ///< K and V element type, resolved
  engine::kv_dtype_choice kv_dtype = engine::kv_dtype_choice::automatic; ///< as asked for
  std::size_t model_file_bytes = 0; ///< size of the model file (mapped read-only)
  /// Resident memory of the process at the end of the run (/proc/self/statm; 0 where
  /// unavailable): the mapped weights it touched, the packed q8_0 copy (whose originals are
  /// released), the KV blocks written and the workspaces.
  std::size_t resident_bytes = 0;
  /// Of it, bytes on transparent huge pages (AnonHugePages; 0 where unavailable or where the
  /// system gave none): the packed q8_0 weights and the KV pool ask for them.
  std::size_t huge_page_bytes = 0;

  double read_gbps() const; ///< the best round's
  /// Single-sequence decode tok/s if it ran at the memory read bandwidth (the best round's, or
  /// round `round`'s).
  double roofline_tokens_per_s() const;
  double roofline_tokens_per_s(std::size_t round) const;

  /// Tokens per second if every matmul ran at the arithmetic peak: the int8 peak for q8_0
  /// weights, else the f32 FMA peak. `prompt_tokens` 0: every token goes through the
  /// classifier (decode); n: a prefill of n tokens, which runs the classifier for its last
  /// token only (its share of the work per token is 1/n of it).
  double compute_ceiling_tokens_per_s(int prompt_tokens = 0) const;
};

/// Runs the benchmark (loads the model, measures bandwidth, prefill, decode).
engine_bench_result run_engine_bench(const engine_bench_options& options);

/// Human-readable report with the ratios the targets are stated in.
std::string format_engine_bench(const engine_bench_result& result);

} // namespace duet::bench
