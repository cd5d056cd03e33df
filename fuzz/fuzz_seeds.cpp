// fuzz_seeds <corpus-root>: writes valid encoded messages as seeds into
// <corpus-root>/fuzz_stream_frame and <corpus-root>/fuzz_control, and request bodies into
// <corpus-root>/fuzz_openai_request, so the fuzzers start from real message shapes instead of
// discovering Cap'n Proto framing or the request fields from nothing.
#include "messages/control.hpp"
#include "messages/stream_frame.hpp"

#include <filesystem>
#include <fstream>
#include <string_view>

using namespace duet::messages;

namespace {

void write(const std::filesystem::path& dir, const std::string& name,
           const std::vector<std::byte>& b) {
  std::filesystem::create_directories(dir);
  std::ofstream(dir / name, std::ios::binary)
      .write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

void write_text(const std::filesystem::path& dir, const std::string& name, std::string_view s) {
  const auto* b = reinterpret_cast<const std::byte*>(s.data());
  write(dir, name, std::vector<std::byte>(b, b + s.size()));
}

} // namespace

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  std::filesystem::path root = argv[1];
  auto frames = root / "fuzz_stream_frame";
  kv_envelope e;
  e.header = {7, 1, 3, 0, 2, kv_dtype::f16, 2, 8, 0x1234, 128};
  e.sequence = 5;
  e.stream_id = 9;
  std::vector<std::byte> payload(128, std::byte{0x42});
  e.placement = payload_placement::inline_bytes;
  e.inline_payload = payload;
  write(frames, "envelope_inline", encode_frame(e));
  e.placement = payload_placement::next_frame;
  write(frames, "envelope_next_frame", encode_frame(e));
  e.placement = payload_placement::remote_region;
  e.remote_offset = 4096;
  e.remote_length = 128;
  write(frames, "envelope_remote", encode_frame(e));
  write(frames, "hello",
        encode_frame(stream_hello{1, 77, std::vector<std::byte>(16, std::byte{1})}));
  write(frames, "hello_keepalive",
        encode_frame(stream_hello{stream_protocol_version, 78, std::vector<std::byte>(16)}));
  write(frames, "credit", encode_frame(credit_grant{77, 1 << 20, 1 << 20, 1 << 16, 4096, 3}));
  write(frames, "credit_keepalive",
        encode_frame(credit_grant{78, 1 << 20, 1 << 20, 1 << 16, 4096, 3, 2500}));
  write(frames, "credit_receipts",
        encode_frame(credit_grant{79, 1 << 20, 1 << 20, 1 << 16, 4096, 3, 2500, true}));
  write(frames, "receipt", encode_frame(credit_grant{79, 0, 0, 0, 0, 0, 0, false, 17}));
  write(frames, "alive", encode_frame(stream_alive{78}));
  write(frames, "error", encode_frame(error_info{3, "corrupt"}));
  write(frames, "bye", encode_frame(stream_bye{}));
  write(frames, "end", encode_frame(stream_bye{77}));
  auto control = root / "fuzz_control";
  write(control, "prefill_task", encode(prefill_task{1, 2, {1, 2, 3}, 0, 4, 2, "inproc://kv"}));
  write(control, "prefill_result", encode(prefill_result{1, 2, 5, 3, 4, {}}));
  write(control, "decode_admission", encode(decode_admission{1, 2, 3, 4, 5, 6, true, {}}));
  write(control, "token_chunk", encode(token_chunk{1, 2, {5, 6}, {3, 4}, false, {}}));
  write(control, "node_hello", encode(node_hello{1, "n", "cpu", true, true, "inproc://kv"}));
  write(control, "heartbeat", encode(heartbeat{"n", 1, 2, 3}));

  auto requests = root / "fuzz_openai_request";
  write_text(requests, "completion",
             R"({"model":"m","prompt":"Once upon a time","max_tokens":16,"temperature":0,)"
             R"("top_p":0.9,"top_k":40,"seed":7,"stop":["\n","The end"],"stream":true,)"
             R"("stream_options":{"include_usage":true},"user":"u","return_token_ids":true})");
  write_text(requests, "completion_ids", R"({"prompt":[[1,2,3]],"max_tokens":4,"n":1})");
  write_text(requests, "chat",
             R"({"messages":[{"role":"system","content":"Be brief."},{"role":"user",)"
             R"("content":[{"type":"text","text":"Hi"}]},{"role":"assistant"}],)"
             R"("max_completion_tokens":8,"stop":"x"})");
  return 0;
}
