// `duet serve`: an OpenAI-compatible HTTP API (apps/gateway.hpp) in front of a cluster — by
// default an embedded one (actors/cluster.hpp): the bundled stories260K model on one prefill and
// one decode node in this process. With --nodes-listen HOST:PORT the cluster is the `duet node`
// processes that join there instead (actors/remote_cluster.hpp, as `duet controller`); the
// gateway is the same either way. docs/serving.md is the user guide; docs/configuration.md the
// table of options (flags > DUET_* environment > --config TOML file > defaults).
#include "actors/cluster.hpp"
#include "actors/remote_cluster.hpp"
#include "apps/command.hpp"
#include "apps/config.hpp"
#include "apps/gateway.hpp"
#include "apps/log.hpp"
#include "apps/progress.hpp"
#include "engine/tokenizer.hpp"

#include <fmt/core.h>
#include <prometheus/registry.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <mutex>
#include <pthread.h>
#include <string>
#include <string_view>
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

/// Turns SIGINT / SIGTERM into a stop, from the first moment on: while the cluster starts (a
/// multi-process one may wait long for its nodes) requested() tells the wait to give up; once
/// the gateway is armed, its stop() runs — repeatedly until disarm(), because a stop() that lands
/// before the HTTP server runs would be lost. SIGUSR1 only wakes the thread so it can end.
class shutdown_waiter {
public:
  shutdown_waiter(sigset_t signals, std::shared_ptr<spdlog::logger> log)
      : signals_(signals), log_(std::move(log)), thread_([this] { wait(); }) {}

  ~shutdown_waiter() {
    disarm();
    pthread_kill(thread_.native_handle(), SIGUSR1); // wakes sigwait if no signal came
    thread_.join();
  }

  shutdown_waiter(const shutdown_waiter&) = delete;
  shutdown_waiter& operator=(const shutdown_waiter&) = delete;

  /// A shutdown signal arrived.
  bool requested() const { return requested_.load(); }

  /// On a shutdown signal (also one that already came), run `stop` until disarm().
  void arm(std::function<void()> stop) {
    std::lock_guard guard{mutex_};
    stop_ = std::move(stop);
    changed_.notify_all();
  }

  /// No more stop() calls after this returns (the gateway may go away).
  void disarm() {
    std::lock_guard guard{mutex_};
    stop_ = nullptr;
    finished_ = true;
    changed_.notify_all();
  }

private:
  void wait() {
    int sig = 0;
    sigwait(&signals_, &sig);
    if (sig == SIGUSR1) return;
    log_->info("request_id=- event=shutdown signal={}", sig == SIGINT ? "SIGINT" : "SIGTERM");
    requested_.store(true);
    std::unique_lock lock{mutex_};
    while (!finished_) {
      if (stop_) stop_(); // under the lock: disarm() waits for a running stop() to end
      changed_.wait_for(lock, std::chrono::milliseconds(20));
    }
  }

  sigset_t signals_;
  std::shared_ptr<spdlog::logger> log_;
  std::atomic<bool> requested_{false};
  std::mutex mutex_;
  std::condition_variable changed_;
  std::function<void()> stop_;
  bool finished_ = false;
  std::thread thread_; ///< last: starts once the members it uses exist
};

/// What both cluster shapes take from the configuration.
actors::cluster_config cluster_config_of(const serve_config& config,
                                         std::shared_ptr<prometheus::Registry> registry) {
  actors::cluster_config cc;
  cc.model_path = config.model;
  cc.tokenizer_path = config.tokenizer;
  cc.placement = config.placement;
  cc.engine_threads = config.engine_threads;
  cc.kv_dtype = config.kv_dtype;
  cc.requests_max = std::max(cc.requests_max, config.max_concurrent);
  cc.metrics = std::move(registry);
  return cc;
}

std::unique_ptr<actors::cluster> start_embedded(const serve_config& config,
                                                std::shared_ptr<prometheus::Registry> registry,
                                                const std::shared_ptr<spdlog::logger>& log,
                                                progress& loading) {
  auto cc = cluster_config_of(config, std::move(registry));
  actors::parse_local_shape(config.local, cc);
  cc.transport = config.transport;
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
  return cluster;
}

/// The controller of a multi-process cluster: listens for `duet node` processes and returns once
/// config.nodes joined and started their shards and lanes (nullptr when a shutdown signal came
/// first). Prints `nodes listening on HOST:PORT` on stdout (flushed) before it waits, so scripts
/// learn an ephemeral port; `address` gets that HOST:PORT.
std::unique_ptr<actors::cluster>
start_multiprocess(const serve_config& config, std::shared_ptr<prometheus::Registry> registry,
                   const std::shared_ptr<spdlog::logger>& log, progress& loading,
                   const shutdown_waiter& waiter, std::string& address) {
  auto cc = cluster_config_of(config, std::move(registry));
  cc.prefill_split = config.nodes_split;
  // KV moves between node processes over what each `duet node --transport` chose; here the
  // name only labels this process's KV metrics (which stay 0: the shards run on the nodes).
  cc.transport = "per-node";
  const auto listen = parse_host_port(config.nodes_listen);
  actors::controller_options opts;
  opts.listen_host = listen.first;
  opts.port = static_cast<std::uint16_t>(listen.second);
  opts.nodes = config.nodes;
  opts.join_timeout_ms = config.nodes_join_timeout_ms;
  opts.on_listening = [&](std::uint16_t bound) {
    address = fmt::format("{}:{}", listen.first, bound);
    log->info("request_id=- event=nodes_listening address={} nodes={} join_timeout_ms={}", address,
              config.nodes, config.nodes_join_timeout_ms);
    fmt::print("nodes listening on {}\n", address);
    std::fflush(stdout);
    loading.update(0.3, fmt::format("waiting for {} nodes on {}", config.nodes, address));
  };
  // Joins, spawned actors, node down and re-placement at info; per-request placements (one
  // line per request) at debug.
  opts.on_event = [log](const std::string& text) {
    log->log(text.rfind("placed ", 0) == 0 ? spdlog::level::debug : spdlog::level::info,
             "request_id=- event=cluster message={}", logfmt_value(text));
  };
  opts.stop_requested = [&waiter] { return waiter.requested(); };
  loading.update(0.1, fmt::format("model {}, nodes join on {}",
                                  std::filesystem::path{config.model}.filename().string(),
                                  config.nodes_listen));
  try {
    return actors::make_controller_cluster(cc, opts);
  } catch (const std::exception& e) {
    if (waiter.requested()) return nullptr;
    // A join timeout is what a user meets first (the nodes were not started, or cannot reach
    // this address): say how nodes join. Other errors (model, address, placement) say it all.
    if (address.empty() ||
        std::string_view{e.what()}.find("nodes joined within") == std::string_view::npos)
      throw;
    throw std::runtime_error(fmt::format(
        "{} (nodes join with `duet node --join {} --role prefill|decode|both --transport "
        "zmq+tcp`; --nodes-join-timeout-ms sets the wait)",
        e.what(), address));
  }
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
  const bool multiprocess = !config.nodes_listen.empty();

  // Signals first, before any thread (CAF workers, HTTP pool) exists. A write to a client that
  // went away must fail with EPIPE (and cancel the request), not kill the process.
  std::signal(SIGPIPE, SIG_IGN);
  shutdown_waiter waiter{block_shutdown_signals(), log};

  // -- the cluster ---------------------------------------------------------------------------
  progress loading{"duet serve: loading"};
  loading.update(0.05, "checking files");
  for (const auto& path : {config.model, config.tokenizer}) {
    if (!path.empty() && !std::filesystem::exists(path))
      throw std::runtime_error(fmt::format("{} does not exist (set --model/--tokenizer, or "
                                           "DUET_MODELS_DIR for the bundled model)",
                                           path));
  }
  auto registry = std::make_shared<prometheus::Registry>();
  std::string nodes_address; // multi-process: where the nodes joined (the concrete port)
  auto cluster = multiprocess
                     ? start_multiprocess(config, registry, log, loading, waiter, nodes_address)
                     : start_embedded(config, registry, log, loading);
  if (!cluster || waiter.requested()) {
    loading.finish("stopped before serving");
    log->info("request_id=- event=stopped");
    return;
  }
  const std::string shape = multiprocess
                                ? fmt::format("{} nodes joined on {}", config.nodes, nodes_address)
                                : config.local;
  loading.finish(fmt::format("{} ready ({})", cluster->model_name(), shape));

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

  log->info("request_id=- event=listening url=http://{}:{} model={} cluster={} transport={} "
            "placement={} api_keys={} max_concurrent={}",
            config.host, port, go.model_name, logfmt_value(shape),
            multiprocess ? "per-node" : config.transport,
            config.placement == actors::placement_mode::automatic    ? "auto"
            : config.placement == actors::placement_mode::integrated ? "integrated"
                                                                     : "disaggregated",
            config.api_keys.size(), config.max_concurrent);
  // The line scripts and tests wait for (with --port 0 it is how they learn the port).
  fmt::print("listening on http://{}:{}\n", config.host, port);
  std::fflush(stdout);
  waiter.arm([&gw] { gw.stop(); });
  gw.serve();
  waiter.disarm(); // before gw goes away; the cluster stops after it (nodes then exit)
  log->info("request_id=- event=stopped");
}

void setup_serve(CLI::App& app) {
  auto flags = std::make_shared<serve_flags>();
  auto* cmd = app.add_subcommand(
      "serve",
      "Serve a model over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions,\n"
      "/v1/models, /health, /ready, /metrics), streaming with server-sent events.\n"
      "With no options: the bundled stories260K model, 1 prefill + 1 decode node in this\n"
      "process, on http://127.0.0.1:8000. With --nodes-listen HOST:PORT the cluster is the\n"
      "`duet node --join HOST:PORT` processes that join instead. Try:\n"
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
