// duet — the command line: serve, node, controller, generate, bench, chaos, convert, synth.
#include "apps/command.hpp"
#include "apps/malloc_policy.hpp"

#include <cstdlib>
#include <iostream>

namespace duet::apps {

std::vector<command_setup>& command_registry() {
  static std::vector<command_setup> registry;
  return registry;
}

std::string default_models_dir() {
  if (const char* env = std::getenv("DUET_MODELS_DIR"); env != nullptr && *env != '\0') return env;
  return DUET_DEFAULT_MODELS_DIR;
}

} // namespace duet::apps

int main(int argc, char** argv) {
  duet::apps::apply_malloc_policy();
  CLI::App app{"duet: an actor-model fabric for disaggregated LLM inference.\n"
               "Prefill and decode run as CAF actors on nodes of different hardware profiles;\n"
               "the KV cache moves between them over in-process, ZeroMQ or libfabric transports.\n"
               "Run `duet <command> --help` for each command's options.",
               "duet"};
  app.set_version_flag("--version", std::string{"duet "} + DUET_VERSION);
  app.require_subcommand(1);
  for (auto setup : duet::apps::command_registry()) setup(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::cerr << "duet: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
