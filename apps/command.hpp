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

} // namespace duet::apps

namespace duet::apps {

/// The `duet bench` parent command, created on first use; benchmarks add subcommands to it.
CLI::App& bench_command(CLI::App& app);

} // namespace duet::apps
