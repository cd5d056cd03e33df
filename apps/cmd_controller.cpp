// `duet controller`: the controller process of a multi-process cluster. It listens on CAF's
// middleman for `duet node` processes, waits for --nodes of them, places prefill shards and
// decode lanes on them, and runs the request actors. Requests come in as lines (--requests-from
// FILE, "-" for stdin) so tests and scripts can drive it without a gateway:
//
//   in:   <request_id> <max_tokens> <auto|integrated|disaggregated> <tok>,<tok>,...
//         kill <actor name>          (fault injection: "decode/1", "prefill/0/0")
//         crash-node <node id>       (fault injection: every actor of that node at once)
//   out:  listening <host>:<port>
//         event <text>                       (node joined / down, placement, re-placement)
//         token <request_id> <position> <token>
//         done <request_id> <length|stop|cancelled|error> tokens=<n> restarts=<r> error=<text>
//
// With input it exits once the input ends and every request is done; without, it serves until
// SIGINT / SIGTERM.
#include "actors/remote_cluster.hpp"
#include "apps/command.hpp"

#include <fmt/core.h>

#include <atomic>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>

namespace duet::apps {

namespace {

struct controller_cli {
  std::string model;
  std::string tokenizer;
  std::string listen = "127.0.0.1:0";
  int nodes = 2;
  int split = 1;
  std::string placement = "auto";
  std::string requests_from;
  int join_timeout_ms = 30000;
  int heartbeat_interval_ms = 200;
  int heartbeat_timeout_ms = 2000;
  int chunk_tokens = 64;
};

std::mutex out_mutex;

void say(const std::string& line) {
  std::lock_guard guard{out_mutex};
  std::fwrite(line.data(), 1, line.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

/// "HOST:PORT" (the port may be 0).
std::pair<std::string, std::uint16_t> split_host_port(const std::string& text) {
  auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0)
    throw CLI::ValidationError("address", "expected HOST:PORT, got '" + text + "'");
  int port = 0;
  try {
    std::size_t used = 0;
    port = std::stoi(text.substr(colon + 1), &used);
    if (used != text.size() - colon - 1 || port < 0 || port > 65535)
      throw std::invalid_argument("port");
  } catch (const std::exception&) {
    throw CLI::ValidationError("address", "bad port in '" + text + "'");
  }
  return {text.substr(0, colon), std::uint16_t(port)};
}

actors::placement_mode parse_mode(const std::string& text) {
  if (text == "auto") return actors::placement_mode::automatic;
  if (text == "integrated") return actors::placement_mode::integrated;
  if (text == "disaggregated") return actors::placement_mode::disaggregated;
  throw std::invalid_argument("placement must be auto, integrated or disaggregated, got '" + text +
                              "'");
}

const char* reason_name(actors::finish_reason r) {
  switch (r) {
  case actors::finish_reason::length:
    return "length";
  case actors::finish_reason::stop:
    return "stop";
  case actors::finish_reason::cancelled:
    return "cancelled";
  case actors::finish_reason::error:
    return "error";
  }
  return "error";
}

/// "kill <name>" or "crash-node <n>": runs it and reports it as an event line (true), or not
/// a fault command (false). The controller's supervisor restarts what was killed.
bool fault_command(actors::cluster& cluster, const std::string& line) {
  std::istringstream in{line};
  std::string verb, arg, extra;
  in >> verb >> arg;
  if (verb != "kill" && verb != "crash-node") return false;
  if (arg.empty() || (in >> extra)) {
    say(fmt::format("rejected '{}': expected 'kill <actor name>' or 'crash-node <node id>'", line));
    return true;
  }
  if (verb == "kill") {
    say(cluster.kill_actor(arg) ? fmt::format("event killed {}", arg)
                                : fmt::format("event kill {}: no live actor of that name", arg));
    return true;
  }
  int node = -1;
  try {
    std::size_t used = 0;
    node = std::stoi(arg, &used);
    if (used != arg.size()) throw std::invalid_argument("trailing");
  } catch (const std::exception&) {
    say(fmt::format("rejected '{}': node id '{}' is not a number", line, arg));
    return true;
  }
  auto killed = cluster.crash_node(node);
  std::string names;
  for (const auto& n : killed) names += (names.empty() ? "" : ",") + n;
  say(killed.empty() ? fmt::format("event crash-node {}: no live actor on that node", node)
                     : fmt::format("event crashed node {}: {}", node, names));
  return true;
}

/// One request line into a completion_request; throws std::invalid_argument.
actors::completion_request parse_request(const std::string& line) {
  std::istringstream in{line};
  actors::completion_request req;
  std::string mode;
  std::string tokens;
  if (!(in >> req.request_id >> req.max_tokens >> mode >> tokens))
    throw std::invalid_argument("expected '<id> <max_tokens> <mode> <tok>,<tok>,...'");
  req.placement = parse_mode(mode);
  std::istringstream toks{tokens};
  for (std::string t; std::getline(toks, t, ',');) req.prompt_tokens.push_back(std::stoi(t));
  return req;
}

void run_controller(const controller_cli& o) {
  auto [host, port] = split_host_port(o.listen);
  actors::cluster_config cfg;
  cfg.model_path = o.model;
  cfg.tokenizer_path = o.tokenizer;
  cfg.prefill_split = o.split;
  cfg.placement = parse_mode(o.placement);
  cfg.prefill_chunk_tokens = o.chunk_tokens;
  actors::controller_options opts;
  opts.listen_host = host;
  opts.port = port;
  opts.nodes = o.nodes;
  opts.join_timeout_ms = o.join_timeout_ms;
  opts.heartbeat_interval_ms = o.heartbeat_interval_ms;
  opts.heartbeat_timeout_ms = o.heartbeat_timeout_ms;
  opts.on_listening = [host = host](std::uint16_t p) {
    say(fmt::format("listening {}:{}", host, p));
  };
  opts.on_event = [](const std::string& text) { say("event " + text); };

  // Signals are waited for, not handled asynchronously (the actor system owns its threads).
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto cluster = actors::make_controller_cluster(cfg, opts);
  say(fmt::format("ready nodes={}", o.nodes));

  if (o.requests_from.empty()) {
    int sig = 0;
    sigwait(&signals, &sig);
    say(fmt::format("stopping on signal {}", sig));
    return;
  }
  std::ifstream file;
  if (o.requests_from != "-") {
    file.open(o.requests_from);
    if (!file) throw std::runtime_error("cannot read requests from " + o.requests_from);
  }
  std::istream& in = o.requests_from == "-" ? std::cin : file;
  std::mutex mutex;
  std::condition_variable idle;
  int in_flight = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    if (fault_command(*cluster, line)) continue;
    actors::completion_request req;
    try {
      req = parse_request(line);
    } catch (const std::exception& e) {
      say(fmt::format("rejected '{}': {}", line, e.what()));
      continue;
    }
    {
      std::lock_guard guard{mutex};
      ++in_flight;
    }
    actors::completion_callbacks cb;
    auto id = req.request_id;
    cb.on_token = [id](int position, int token) {
      say(fmt::format("token {} {} {}", id, position, token));
    };
    cb.on_done = [id, &mutex, &idle, &in_flight](const actors::completion_result& r) {
      say(fmt::format("done {} {} tokens={} restarts={} error={}", id, reason_name(r.reason),
                      r.completion_tokens, r.restarts, r.error_message));
      std::lock_guard guard{mutex};
      --in_flight;
      idle.notify_all();
    };
    cluster->submit(std::move(req), std::move(cb));
  }
  std::unique_lock lock{mutex};
  idle.wait(lock, [&] { return in_flight == 0; });
}

void setup_controller(CLI::App& app) {
  auto o = std::make_shared<controller_cli>();
  o->model = default_models_dir() + "/stories260K.bin";
  o->tokenizer = default_models_dir() + "/tok512.bin";
  auto* cmd = app.add_subcommand(
      "controller", "Run the controller of a multi-process cluster (nodes join with duet node)");
  cmd->add_option("--listen", o->listen, "HOST:PORT for nodes to join (port 0: ephemeral)")
      ->capture_default_str();
  cmd->add_option("--nodes", o->nodes, "Nodes to wait for before serving")->capture_default_str();
  cmd->add_option("--model,-m", o->model, "Model file")->capture_default_str();
  cmd->add_option("--tokenizer,-z", o->tokenizer, "llama2.c tokenizer")->capture_default_str();
  cmd->add_option("--split", o->split, "Prefill shards per pipeline (0: as profiles fit)")
      ->capture_default_str();
  cmd->add_option("--placement", o->placement, "auto, integrated or disaggregated")
      ->capture_default_str();
  cmd->add_option("--chunk-tokens", o->chunk_tokens, "Prompt tokens per prefill chunk")
      ->capture_default_str();
  cmd->add_option("--requests-from", o->requests_from,
                  "Read request lines from FILE ('-': stdin), print tokens, exit when done");
  cmd->add_option("--join-timeout-ms", o->join_timeout_ms, "Wait this long for the nodes")
      ->capture_default_str();
  cmd->add_option("--heartbeat-interval-ms", o->heartbeat_interval_ms, "How often nodes report")
      ->capture_default_str();
  cmd->add_option("--heartbeat-timeout-ms", o->heartbeat_timeout_ms,
                  "Silence after which a node is dead")
      ->capture_default_str();
  cmd->callback([o] { run_controller(*o); });
}

const register_command reg{&setup_controller};

} // namespace

} // namespace duet::apps
