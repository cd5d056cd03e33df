#pragma once

#include <CLI/CLI.hpp>

#include <string>
#include <vector>

namespace duet::apps {

/// Adds one subcommand (with its options and callback) to the `duet` app.
using command_setup = void (*)(CLI::App& app);

/// All subcommands linked into the executable, in registration order.
std::vector<command_setup>& command_registry();

/// Registers a subcommand at static-initialisation time:
/// `static const duet::apps::register_command reg{&setup_generate};` in its cmd_*.cpp.
struct register_command {
  explicit register_command(command_setup setup) { command_registry().push_back(setup); }
};

/// Where the bundled test models live: $DUET_MODELS_DIR, else the build's default
/// (../shared/models next to the source tree).
std::string default_models_dir();

/// `--kv-dtype auto|f32|f16` (engine/kv_dtype.hpp) into `value`, with one help text for every
/// command that takes it; `more` is appended to that text.
inline CLI::Option* add_kv_dtype_option(CLI::App* cmd, std::string& value,
                                        const std::string& more = "") {
  return cmd
      ->add_option("--kv-dtype", value,
                   "K and V element type: auto (f32 when every weight matrix is f32, which "
                   "reproduces llama2.c's run.c bit for bit; f16 for f16 or q8_0 weights), f32 "
                   "or f16" +
                       more)
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "f32", "f16"}));
}

} // namespace duet::apps

namespace duet::apps {

/// The `duet bench` parent command, created on first use; benchmarks add subcommands to it.
CLI::App& bench_command(CLI::App& app);

} // namespace duet::apps
