// `duet synth`: random-weight GGUF models of standard Llama shapes (stories15M, stories110M,
// a ~1B TinyLlama shape) in f32 / f16 / q8_0, for benchmarks at sizes no bundled model has.
#include "apps/command.hpp"
#include "engine/synth.hpp"

#include <fmt/core.h>

#include <chrono>
#include <filesystem>
#include <memory>

namespace duet::apps {

namespace {

void setup_synth(CLI::App& app) {
  struct options {
    std::string shape;
    std::string out;
    std::string type = "f32";
    std::uint64_t seed = 1;
  };
  auto opts = std::make_shared<options>();
  auto* cmd = app.add_subcommand("synth", "Write a random-weight GGUF model of a standard shape");
  std::vector<std::string> names;
  std::string shapes_help = "Model shape:";
  for (const auto& s : engine::synth_shapes()) {
    names.push_back(s.name);
    shapes_help += "\n  " + s.name + ": " + s.description;
  }
  cmd->add_option("--shape", opts->shape, shapes_help)->required()->check(CLI::IsMember(names));
  cmd->add_option("--out", opts->out, "GGUF file to write")->required();
  cmd->add_option("--type", opts->type, "Tensor type: f32, f16 or q8_0 (norms stay f32)")
      ->check(CLI::IsMember({"f32", "f16", "q8_0"}))
      ->capture_default_str();
  cmd->add_option("--seed", opts->seed, "Seed of the weights (same seed, same file)")
      ->capture_default_str();
  cmd->callback([opts] {
    const auto shape = engine::find_synth_shape(opts->shape);
    const auto type = *engine::parse_dtype(opts->type);
    const auto t0 = std::chrono::steady_clock::now();
    engine::synth_options so;
    so.seed = opts->seed;
    engine::write_synth_model(opts->out, *shape, type, so,
                              [](const std::string& line) { fmt::print("{}\n", line); });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const auto bytes = std::filesystem::file_size(opts->out);
    fmt::print("{}: {} {} seed {}, {:.1f} MB in {:.1f} s\n", opts->out, shape->name,
               engine::dtype_name(type), opts->seed, static_cast<double>(bytes) / 1e6, s);
  });
}

const register_command reg{&setup_synth};

} // namespace
} // namespace duet::apps
