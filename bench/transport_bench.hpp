#pragma once

// `duet bench transport`: KV-segment throughput and latency per transport backend, next to
// baselines measured in the same run (memcpy of the same size, raw ZeroMQ without Cap'n
// Proto). Sender and receiver run on two threads of this process; the sender reuses one
// payload buffer (as a producer that recycles its KV staging buffers would), the receiver
// verifies every segment's xxh3 (always on, it is part of the protocol).
//
// Baselines. The two, printed as before and used for the "vs base" column:
//   memcpy              the same bytes into one warm destination buffer, over and over
//   raw zmq+tcp / +ipc  PAIR sockets, zero-copy sends, the receiver drops each message unread
// Neither does what a transport must, so five more are printed next to them, each only
// when a backend it is for is measured; the backend's note gives its ratio to them:
//   memcpy ring         the same bytes into successive slots of a ring the size of the
//                       receive window the transports get here (max(4 x size, 16 MiB), or
//                       --window-segments x size; laid out as fabric's window: 2 MiB-aligned,
//                       huge pages advised), after one untimed pass: a transport cannot land
//                       every segment in one warm buffer
//   cma ring            the same, copied by process_vm_writev into this process: the copy
//                       libfabric's shm makes for an RMA write, alone
//   cma ring +xxh3      the same copies with a second thread verifying each slot's xxh3 once
//                       it is written, as a receiver must: the copy and the verification on
//                       two cores, with no transport between them (fabric+shm's ceiling)
//   raw zmq+tcp +xxh3   raw ZeroMQ whose receiver verifies each message's xxh3 before
//                       dropping it, as every arrival must be verified (no envelope, no
//                       credits: in flight is bounded only by ZeroMQ's high-water marks)
//   raw zmq+tcp framed +xxh3
//                       the same with each message sent as frames of 1 MiB and hashed frame
//                       by frame, as zmq+tcp sends a payload over 1 MiB (sizes over 1 MiB)
// The targets themselves are unchanged: fabric+shm vs memcpy, zmq vs raw zmq.

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace duet::bench {

struct transport_point {
  std::string name;               ///< "inproc", "zmq+tcp", ..., "memcpy", "raw zmq+tcp"
  std::size_t bytes = 0;          ///< payload bytes per segment
  double gbps = 0;                ///< streaming throughput, 1e9 bytes/s of payload: the best round
  std::vector<double> round_gbps; ///< each round's (0 where it failed)
  double p50_us = 0;  ///< one-way latency of a lone segment (send call to recv return): the
                      ///< median of the rounds' medians
  double p99_us = 0;  ///< the highest of the rounds' 99th percentiles
  int iterations = 0; ///< streamed segments, all rounds
  std::string note;   ///< an error, or a fact worth printing (e.g. "payload not copied")
};

struct transport_bench_options {
  std::vector<std::size_t> sizes{std::size_t{64} << 10, std::size_t{1} << 20,
                                 std::size_t{16} << 20};
  std::vector<std::string> backends{"inproc", "zmq+tcp", "zmq+ipc", "fabric+shm", "fabric+tcp"};
  std::size_t mib_per_point = 96; ///< payload streamed per (backend, size, round)
  /// Every baseline and backend is measured once per round, round after round (not one's
  /// rounds back to back), and the best round is reported: on a shared VM the speed changes
  /// over seconds, so a ratio is taken between figures of the same round.
  int rounds = 3;
  int latency_samples = 200; ///< lone segments timed per point (fewer for big sizes)
  /// Receive window per sender, in segments of the measured size (at least 1 MiB, the
  /// segment bound the benchmark sets); 0: the default policy (window_for in the .cpp).
  std::size_t window_segments = 0;
  /// Told (fraction done 0..1, point name) before each point; may be empty. The command line
  /// shows it as a progress bar on a terminal, plain lines otherwise.
  std::function<void(double, std::string_view)> on_progress;
};

/// Runs every baseline and backend at every size; never throws for a backend that fails (the
/// point carries the error in `note`).
std::vector<transport_point> run_transport_bench(const transport_bench_options& opts);

/// Bytes of the Cap'n Proto envelope that travels with a segment (for the overhead figure).
std::size_t envelope_bytes();

} // namespace duet::bench
