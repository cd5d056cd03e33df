// `duet convert`: a llama2.c checkpoint + tokenizer -> a GGUF v3 `llama` file that llama.cpp
// and duet's own reader load, with tensors stored as f32, f16 or q8_0.
#include "apps/command.hpp"
#include "engine/gguf_export.hpp"

#include <fmt/core.h>

#include <memory>

namespace duet::apps {

namespace {

void setup_convert(CLI::App& app) {
  struct options {
    std::string model;
    std::string tokenizer;
    std::string out;
    std::string type = "f32";
  };
  auto opts = std::make_shared<options>();
  auto* cmd = app.add_subcommand("convert", "Convert a llama2.c checkpoint + tokenizer to GGUF");
  cmd->add_option("--model", opts->model, "llama2.c checkpoint (.bin)")->required();
  cmd->add_option("--tokenizer", opts->tokenizer, "llama2.c tokenizer (tok*.bin)")->required();
  cmd->add_option("--out", opts->out, "GGUF file to write")->required();
  cmd->add_option("--type", opts->type,
                  "Tensor type: f32, f16 or q8_0 (norms stay f32; q8_0 tensors whose rows are "
                  "not a multiple of 32 are stored as f16)")
      ->check(CLI::IsMember({"f32", "f16", "q8_0"}))
      ->capture_default_str();
  cmd->callback([opts] {
    engine::convert_llama2c_to_gguf(opts->model, opts->tokenizer, opts->out,
                                    *engine::parse_dtype(opts->type),
                                    [](const std::string& line) { fmt::print("{}\n", line); });
  });
}

const register_command reg{&setup_convert};

} // namespace
} // namespace duet::apps
