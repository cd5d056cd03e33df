// `duet serve`: an OpenAI-compatible HTTP API (apps/gateway.hpp) in front of an embedded
// cluster (actors/cluster.hpp) — by default the bundled stories260K model on one prefill and
// one decode node in this process. docs/serving.md is the user guide; docs/configuration.md the
// table of options (flags > DUET_* environment > --config TOML file > defaults).
#include "actors/cluster.hpp"
#include "apps/command.hpp"
#include "apps/config.hpp"
#include "apps/gateway.hpp"
#include "apps/log.hpp"
#include "apps/progress.hpp"
#include "engine/tokenizer.hpp"

#include <fmt/core.h>
#include <prometheus/registry.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <pthread.h>
#include <thread>

namespace duet::apps {

namespace {

struct serve_flags {
  std::string config_file;
  bool print_table = false;
  std::map<std::string, std::string> single;             ///< by flag
  std::map<std::string, std::vector<std::string>> lists; ///< repeatable flags
};

/// Blocks SIGINT/SIGTERM/SIGUSR1 in this thread and every thread it creates afterwards, so only
/// the waiter thread (sigwait) sees them and shutdown runs as ordinary code, not in a handler.
sigset_t block_shutdown_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

void run_serve(const serve_flags& flags, CLI::App* cmd) {
  option_values given;
  for (const auto& o : serve_options()) {
    if (cmd->count(o.flag) == 0) continue;
    if (o.repeatable)
      given[o.flag] = flags.lists.at(o.flag);
    else
      given[o.flag] = {flags.single.at(o.flag)};
  }
  serve_config config = resolve_serve_config(default_models_dir(), given, flags.config_file,
                                             [](const char* name) { return std::getenv(name); });
  auto log = make_logger("serve", config.log_level);

  // Signals first, before any thread (CAF workers, HTTP pool) exists. A write to a client that
  // went away must fail with EPIPE (and cancel the request), not kill the process.
  std::signal(SIGPIPE, SIG_IGN);
  sigset_t signals = block_shutdown_signals();

  // -- the embedded cluster ------------------------------------------------------------------
  progress loading{"duet serve: loading"};
  loading.update(0.05, "checking files");
  for (const auto& path : {config.model, config.tokenizer}) {
    if (!path.empty() && !std::filesystem::exists(path))
      throw std::runtime_error(fmt::format("{} does not exist (set --model/--tokenizer, or "
                                           "DUET_MODELS_DIR for the bundled model)",
                                           path));
  }
  actors::cluster_config cc;
  cc.model_path = config.model;
  cc.tokenizer_path = config.tokenizer;
  actors::parse_local_shape(config.local, cc);
  cc.transport = config.transport;
  cc.placement = config.placement;
  cc.engine_threads = config.engine_threads;
  cc.requests_max = std::max(cc.requests_max, config.max_concurrent);
  auto registry = std::make_shared<prometheus::Registry>();
  cc.metrics = registry;
  loading.update(0.2, fmt::format("model {} on {}, KV over {}",
                                  std::filesystem::path{config.model}.filename().string(),
                                  config.local, config.transport));
  auto cluster = actors::make_embedded_cluster(cc);
  loading.update(0.8, "placing prefill and decode paths");
  const auto ready_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!cluster->ready() && std::chrono::steady_clock::now() < ready_deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20)); // bounded poll of a flag
  if (!cluster->ready())
    log->warn("request_id=- event=not_ready message=\"no prefill+decode path placed after 60 s: "
              "completions answer 503 until one is\"");
  loading.finish(fmt::format("{} ready ({})", cluster->model_name(), config.local));

  // -- the gateway ---------------------------------------------------------------------------
  const engine::tokenizer& tok = cluster->tokenizer();
  text_codec codec;
  codec.encode = [&tok](std::string_view text, bool add_bos) { return tok.encode(text, add_bos); };
  codec.decode = [&tok](int prev, int token) { return tok.decode(prev, token); };
  codec.bos_id = tok.bos_id();
  codec.eos_id = tok.eos_id();
  codec.vocab_size = tok.vocab_size();

  gateway_options go;
  go.host = config.host;
  go.port = config.port;
  go.model_name = config.model_name.empty() ? cluster->model_name() : config.model_name;
  go.api_keys = config.api_keys;
  go.max_concurrent = config.max_concurrent;
  go.max_body_bytes = config.max_body_bytes;
  go.max_tokens = config.max_tokens;
  go.placement = config.placement;
  go.request_timeout_ms = config.request_timeout_ms;
  gateway gw{go, *cluster, codec, registry, log};
  const int port = gw.bind();

  std::thread waiter([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    if (sig != SIGUSR1)
      log->info("request_id=- event=shutdown signal={}", sig == SIGINT ? "SIGINT" : "SIGTERM");
    gw.stop();
  });
  log->info("request_id=- event=listening url=http://{}:{} model={} local={} transport={} "
            "placement={} api_keys={} max_concurrent={}",
            config.host, port, go.model_name, config.local, config.transport,
            config.placement == actors::placement_mode::automatic    ? "auto"
            : config.placement == actors::placement_mode::integrated ? "integrated"
                                                                     : "disaggregated",
            config.api_keys.size(), config.max_concurrent);
  // The line scripts and tests wait for (with --port 0 it is how they learn the port).
  fmt::print("listening on http://{}:{}\n", config.host, port);
  std::fflush(stdout);
  gw.serve();
  pthread_kill(waiter.native_handle(), SIGUSR1); // wakes the waiter when serve() ended otherwise
  waiter.join();
  log->info("request_id=- event=stopped");
}

void setup_serve(CLI::App& app) {
  auto flags = std::make_shared<serve_flags>();
  auto* cmd = app.add_subcommand(
      "serve",
      "Serve a model over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions,\n"
      "/v1/models, /health, /ready, /metrics), streaming with server-sent events.\n"
      "With no options: the bundled stories260K model, 1 prefill + 1 decode node in this\n"
      "process, on http://127.0.0.1:8000. Try:\n"
      "  curl -N http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\\n"
      "    -d '{\"prompt\": \"Once upon a time\", \"max_tokens\": 64, \"stream\": true}'\n"
      "Every option can also come from a DUET_* environment variable or a --config TOML file\n"
      "(precedence: flags > environment > file > defaults); see docs/configuration.md.");
  cmd->add_option("--config", flags->config_file,
                  "TOML file with any of the options below as keys (env: DUET_CONFIG)");
  cmd->add_flag("--print-config-table", flags->print_table,
                "Print the table of options (Markdown, as in docs/configuration.md) and exit");
  const serve_config defaults = default_serve_config(default_models_dir());
  for (const auto& o : serve_options()) {
    std::string help = fmt::format("{} [env: {}, file key: {}, default: {}]", o.help, o.env, o.key,
                                   o.show(defaults).empty() ? "none" : o.show(defaults));
    if (o.repeatable)
      cmd->add_option(o.flag, flags->lists[o.flag], help)->type_name(o.value_name);
    else
      cmd->add_option(o.flag, flags->single[o.flag], help)->type_name(o.value_name);
  }
  cmd->callback([flags, cmd] {
    if (flags->print_table) {
      fmt::print("{}", config_markdown_table("<models>"));
      return;
    }
    run_serve(*flags, cmd);
  });
}

const register_command reg{&setup_serve};

} // namespace
} // namespace duet::apps
