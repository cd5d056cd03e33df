#include "messages/control.hpp"

#include "messages/duet.capnp.h"

namespace duet::messages {

namespace {

problem malformed(std::string context) {
  return problem{problem_kind::malformed, std::move(context)};
}

void put_error(wire::Error::Builder b, const error_info& e) {
  b.setCode(static_cast<wire::ErrorCode>(e.code));
  b.setContext(e.context);
}

error_info get_error(wire::Error::Reader r) {
  return error_info{static_cast<std::uint16_t>(r.getCode()), std::string(r.getContext().cStr())};
}

template <class T, class L>
std::vector<T> get_list(L list) {
  std::vector<T> out;
  out.reserve(list.size());
  for (auto v : list) out.push_back(v);
  return out;
}

template <class L, class V>
void put_list(L list, const V& values) {
  for (unsigned i = 0; i < values.size(); ++i) list.set(i, values[i]);
}

} // namespace

std::vector<std::byte> encode(const prefill_task& m) {
  capnp::MallocMessageBuilder b;
  auto r = b.initRoot<wire::PrefillTask>();
  r.setRequestId(m.request_id);
  r.setEpoch(m.epoch);
  put_list(r.initTokens(static_cast<unsigned>(m.tokens.size())), m.tokens);
  r.setLayerBegin(m.layer_begin);
  r.setLayerEnd(m.layer_end);
  r.setChunkTokens(m.chunk_tokens);
  r.setKvDestination(m.kv_destination);
  return flat_bytes(b);
}

decoded<prefill_task> decode_prefill_task(std::span<const std::byte> bytes) {
  return read_flat<wire::PrefillTask>(bytes, control_limits, "prefill task",
                                      [](wire::PrefillTask::Reader r) -> decoded<prefill_task> {
                                        prefill_task m;
                                        m.request_id = r.getRequestId();
                                        m.epoch = r.getEpoch();
                                        m.tokens = get_list<std::int32_t>(r.getTokens());
                                        m.layer_begin = r.getLayerBegin();
                                        m.layer_end = r.getLayerEnd();
                                        m.chunk_tokens = r.getChunkTokens();
                                        m.kv_destination = r.getKvDestination().cStr();
                                        if (m.layer_end <= m.layer_begin)
                                          return malformed("prefill task: empty layer range [" +
                                                           std::to_string(m.layer_begin) + ", " +
                                                           std::to_string(m.layer_end) + ")");
                                        if (m.tokens.empty())
                                          return malformed("prefill task: empty prompt");
                                        return m;
                                      });
}

std::vector<std::byte> encode(const prefill_result& m) {
  capnp::MallocMessageBuilder b;
  auto r = b.initRoot<wire::PrefillResult>();
  r.setRequestId(m.request_id);
  r.setEpoch(m.epoch);
  r.setFirstToken(m.first_token);
  r.setPromptTokens(m.prompt_tokens);
  r.setSegmentsSent(m.segments_sent);
  put_error(r.initError(), m.error);
  return flat_bytes(b);
}

decoded<prefill_result> decode_prefill_result(std::span<const std::byte> bytes) {
  return read_flat<wire::PrefillResult>(
      bytes, control_limits, "prefill result",
      [](wire::PrefillResult::Reader r) -> decoded<prefill_result> {
        prefill_result m;
        m.request_id = r.getRequestId();
        m.epoch = r.getEpoch();
        m.first_token = r.getFirstToken();
        m.prompt_tokens = r.getPromptTokens();
        m.segments_sent = r.getSegmentsSent();
        m.error = get_error(r.getError());
        return m;
      });
}

std::vector<std::byte> encode(const decode_admission& m) {
  capnp::MallocMessageBuilder b;
  auto r = b.initRoot<wire::DecodeAdmission>();
  r.setRequestId(m.request_id);
  r.setEpoch(m.epoch);
  r.setPromptTokens(m.prompt_tokens);
  r.setMaxTokens(m.max_tokens);
  r.setNLayers(m.n_layers);
  r.setFirstToken(m.first_token);
  r.setAccepted(m.accepted);
  put_error(r.initError(), m.error);
  return flat_bytes(b);
}

decoded<decode_admission> decode_decode_admission(std::span<const std::byte> bytes) {
  return read_flat<wire::DecodeAdmission>(
      bytes, control_limits, "decode admission",
      [](wire::DecodeAdmission::Reader r) -> decoded<decode_admission> {
        decode_admission m;
        m.request_id = r.getRequestId();
        m.epoch = r.getEpoch();
        m.prompt_tokens = r.getPromptTokens();
        m.max_tokens = r.getMaxTokens();
        m.n_layers = r.getNLayers();
        m.first_token = r.getFirstToken();
        m.accepted = r.getAccepted();
        m.error = get_error(r.getError());
        return m;
      });
}

std::vector<std::byte> encode(const token_chunk& m) {
  capnp::MallocMessageBuilder b;
  auto r = b.initRoot<wire::TokenChunk>();
  r.setRequestId(m.request_id);
  r.setEpoch(m.epoch);
  put_list(r.initTokens(static_cast<unsigned>(m.tokens.size())), m.tokens);
  put_list(r.initPositions(static_cast<unsigned>(m.positions.size())), m.positions);
  r.setFinished(m.finished);
  put_error(r.initError(), m.error);
  return flat_bytes(b);
}

decoded<token_chunk> decode_token_chunk(std::span<const std::byte> bytes) {
  return read_flat<wire::TokenChunk>(
      bytes, control_limits, "token chunk", [](wire::TokenChunk::Reader r) -> decoded<token_chunk> {
        token_chunk m;
        m.request_id = r.getRequestId();
        m.epoch = r.getEpoch();
        m.tokens = get_list<std::int32_t>(r.getTokens());
        m.positions = get_list<std::uint32_t>(r.getPositions());
        m.finished = r.getFinished();
        m.error = get_error(r.getError());
        if (m.tokens.size() != m.positions.size())
          return malformed("token chunk: " + std::to_string(m.tokens.size()) + " tokens but " +
                           std::to_string(m.positions.size()) + " positions");
        for (std::size_t i = 1; i < m.positions.size(); ++i)
          if (m.positions[i] != m.positions[i - 1] + 1)
            return malformed("token chunk: position " + std::to_string(m.positions[i]) +
                             " follows " + std::to_string(m.positions[i - 1]) +
                             " (positions must be contiguous)");
        return m;
      });
}

std::vector<std::byte> encode(const node_hello& m) {
  capnp::MallocMessageBuilder b;
  auto r = b.initRoot<wire::NodeHello>();
  r.setProtocolVersion(m.protocol_version);
  r.setNodeId(m.node_id);
  r.setProfile(m.profile);
  r.setPrefill(m.prefill);
  r.setDecode(m.decode);
  r.setKvAddress(m.kv_address);
  return flat_bytes(b);
}

decoded<node_hello> decode_node_hello(std::span<const std::byte> bytes) {
  return read_flat<wire::NodeHello>(
      bytes, control_limits, "node hello", [](wire::NodeHello::Reader r) -> decoded<node_hello> {
        node_hello m;
        m.protocol_version = r.getProtocolVersion();
        m.node_id = r.getNodeId().cStr();
        m.profile = r.getProfile().cStr();
        m.prefill = r.getPrefill();
        m.decode = r.getDecode();
        m.kv_address = r.getKvAddress().cStr();
        if (m.protocol_version != 1)
          return malformed("node hello: unsupported protocol version " +
                           std::to_string(m.protocol_version));
        if (m.node_id.empty()) return malformed("node hello: empty node id");
        return m;
      });
}

std::vector<std::byte> encode(const heartbeat& m) {
  capnp::MallocMessageBuilder b;
  auto r = b.initRoot<wire::Heartbeat>();
  r.setNodeId(m.node_id);
  r.setSequence(m.sequence);
  r.setActiveSequences(m.active_sequences);
  r.setKvBytesFree(m.kv_bytes_free);
  return flat_bytes(b);
}

decoded<heartbeat> decode_heartbeat(std::span<const std::byte> bytes) {
  return read_flat<wire::Heartbeat>(bytes, control_limits, "heartbeat",
                                    [](wire::Heartbeat::Reader r) -> decoded<heartbeat> {
                                      heartbeat m;
                                      m.node_id = r.getNodeId().cStr();
                                      m.sequence = r.getSequence();
                                      m.active_sequences = r.getActiveSequences();
                                      m.kv_bytes_free = r.getKvBytesFree();
                                      if (m.node_id.empty())
                                        return malformed("heartbeat: empty node id");
                                      return m;
                                    });
}

} // namespace duet::messages
