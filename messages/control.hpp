#pragma once

// Control-plane messages between the actors of a request (duet.capnp): prefill task and
// result, decode admission, token chunk, node hello, heartbeat. Plain C++ values, flat Cap'n
// Proto bytes on the wire, and readers that validate before returning (control_limits).

#include "messages/codec.hpp"
#include "messages/stream_frame.hpp"

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace duet::messages {

struct prefill_task {
  std::uint64_t request_id = 0;
  std::uint32_t epoch = 0;
  std::vector<std::int32_t> tokens; ///< the prompt
  std::uint32_t layer_begin = 0;
  std::uint32_t layer_end = 0;    ///< exclusive, > layer_begin
  std::uint32_t chunk_tokens = 0; ///< tokens per KV segment (0 = whole prompt)
  std::string kv_destination;     ///< transport address of the decode lane
  friend bool operator==(const prefill_task&, const prefill_task&) = default;
};

struct prefill_result {
  std::uint64_t request_id = 0;
  std::uint32_t epoch = 0;
  std::int32_t first_token = -1;
  std::uint32_t prompt_tokens = 0;
  std::uint32_t segments_sent = 0;
  error_info error; ///< code 0 = success
};

struct decode_admission {
  std::uint64_t request_id = 0;
  std::uint32_t epoch = 0;
  std::uint32_t prompt_tokens = 0;
  std::uint32_t max_tokens = 0;
  std::uint32_t n_layers = 0;
  std::int32_t first_token = -1;
  bool accepted = false;
  error_info error;
};

/// Generated tokens with their positions; positions are contiguous (+1 each), checked on read.
struct token_chunk {
  std::uint64_t request_id = 0;
  std::uint32_t epoch = 0;
  std::vector<std::int32_t> tokens;
  std::vector<std::uint32_t> positions;
  bool finished = false;
  error_info error;
};

struct node_hello {
  std::uint32_t protocol_version = 1;
  std::string node_id;
  std::string profile;
  bool prefill = false;
  bool decode = false;
  std::string kv_address;
};

struct heartbeat {
  std::string node_id;
  std::uint64_t sequence = 0;
  std::uint32_t active_sequences = 0;
  std::uint64_t kv_bytes_free = 0;
};

std::vector<std::byte> encode(const prefill_task& m);
std::vector<std::byte> encode(const prefill_result& m);
std::vector<std::byte> encode(const decode_admission& m);
std::vector<std::byte> encode(const token_chunk& m);
std::vector<std::byte> encode(const node_hello& m);
std::vector<std::byte> encode(const heartbeat& m);

/// Each reader validates: prefill_task layer range non-empty and a non-empty prompt;
/// token_chunk tokens.size() == positions.size() and positions contiguous; node_hello
/// protocol version known and node_id non-empty; heartbeat node_id non-empty.
decoded<prefill_task> decode_prefill_task(std::span<const std::byte> bytes);
decoded<prefill_result> decode_prefill_result(std::span<const std::byte> bytes);
decoded<decode_admission> decode_decode_admission(std::span<const std::byte> bytes);
decoded<token_chunk> decode_token_chunk(std::span<const std::byte> bytes);
decoded<node_hello> decode_node_hello(std::span<const std::byte> bytes);
decoded<heartbeat> decode_heartbeat(std::span<const std::byte> bytes);

} // namespace duet::messages
