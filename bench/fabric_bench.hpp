#pragma once

// `duet bench fabric`: what disaggregation costs and buys on this machine, through the real
// embedded cluster (actors, engine, transport). For each mode (integrated, disaggregated) it
// runs requests one at a time, so time-to-first-token is not queueing, and measures:
//  - TTFT: submit -> first token at the client, p50 / p99;
//  - TPOT: gap between consecutive tokens of a request, p50 / p99;
//  - KV transfer: bytes per request, time the shards spent in the transport's send(), and
//    the bandwidth that implies; the share of that transfer hidden behind prefill compute by
//    layer-wise streaming = 1 - max(0, TTFT_disagg - TTFT_integrated) / transfer time;
//  - recovery: a decode lane crashed by the fault injector mid-generation; time from the last
//    token before the crash to the first one after (restart + re-place + recompute).
// The first token of a disaggregated request comes from the last prefill shard's logits, so
// the transfer delays it only by the CPU it takes from the prefill: "hidden" reads 0% whenever
// the TTFT gap exceeds the sender-side time, even when every segment landed before the logits.
// The sender-side time leaves out the receiving side (zmq's I/O thread, the lane's pump): per
// request of stories15M f32 over zmq+tcp, I/O thread 2.5-2.9 ms + pump 0.9-1.1 + sender 0.8 ms
// of CPU vs 0.4-0.7 ms sender-side time (thread CPU from /proc, 11 requests). When the process
// gets about one of the 2 cores (another build running), that CPU lands on the prefill.

#include "engine/dtype.hpp"
#include "engine/kv_dtype.hpp"

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace duet::bench {

struct fabric_bench_options {
  std::string model_path;
  std::string tokenizer_path;
  std::string transport = "inproc";
  int requests = 20;       ///< per mode
  int prompt_tokens = 128; ///< prompt length (repeated story text, BOS first)
  int max_tokens = 32;
  int prefill_split = 1;
  int chunk_tokens = 32;
  int recoveries = 10; ///< decode lanes killed, one per request
  int threads = 1;     ///< engine threads per actor
  /// K and V element type (engine/kv_dtype.hpp); auto: f32 for f32 weights, f16 otherwise
  engine::kv_dtype_choice kv_dtype = engine::kv_dtype_choice::automatic;
  /// Told (fraction done 0..1, step name) as requests finish; may be empty. The command line
  /// shows it as a progress bar on a terminal, plain lines otherwise.
  std::function<void(double, std::string_view)> on_progress;
};

struct latency_summary {
  double p50_ms = 0;
  double p99_ms = 0;
  double mean_ms = 0;
  std::size_t samples = 0;
};

struct fabric_mode_result {
  std::string mode;
  latency_summary ttft;
  latency_summary tpot;
  double kv_bytes_per_request = 0;
  double kv_send_ms_per_request = 0; ///< sender-side transport time
  double kv_segments_per_request = 0;
};

struct fabric_bench_result {
  fabric_mode_result integrated;
  fabric_mode_result disaggregated;
  latency_summary recovery;  ///< failure -> next token
  latency_summary recompute; ///< TTFT of an integrated run over the same length (floor)
  double transport_gbps = 0; ///< KV bytes / send time, disaggregated runs
  double hidden_share = 0;   ///< of the transfer, behind prefill compute
  std::string model;
  int prompt_tokens = 0;
  engine::dtype kv_type = engine::dtype::f32; ///< the K and V the cluster stored and sent
};

/// Runs the benchmark (throws std::runtime_error on setup failures).
fabric_bench_result run_fabric_bench(const fabric_bench_options& options);

/// p50 / p99 / mean of samples in milliseconds.
latency_summary summarize(std::vector<double> samples_ms);

} // namespace duet::bench
