// `duet node`: one node process of a multi-process cluster. It loads the model, binds its KV
// receiver on the chosen transport (decode role), joins the controller over CAF's middleman and
// runs the prefill shards / decode lane the controller places on it, until the controller goes
// away (then it exits 0) or it is killed.
#include "actors/remote_cluster.hpp"
#include "apps/command.hpp"
#include "engine/kv_dtype.hpp"

#include <fmt/core.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <unistd.h>

namespace duet::apps {

namespace {

struct node_cli {
  std::string model;
  std::string tokenizer;
  std::string join;
  std::string profile = "cpu";
  std::string role = "both";
  std::string transport = "zmq+tcp";
  int threads = 1;
  int decode_sequences_max = 16;
  std::string kv_dtype = "auto";
  int decode_step_delay_ms = 0;
  int prefill_chunk_delay_ms = 0;
};

void run_node_command(const node_cli& o) {
  auto colon = o.join.rfind(':');
  if (colon == std::string::npos || colon == 0)
    throw CLI::ValidationError("--join", "expected HOST:PORT, got '" + o.join + "'");
  int port = 0;
  try {
    port = std::stoi(o.join.substr(colon + 1));
  } catch (const std::exception&) {
    throw CLI::ValidationError("--join", "bad port in '" + o.join + "'");
  }
  if (port <= 0 || port > 65535) throw CLI::ValidationError("--join", "port out of range");
  actors::cluster_config cfg;
  cfg.model_path = o.model;
  cfg.tokenizer_path = o.tokenizer;
  cfg.transport = o.transport;
  cfg.engine_threads = o.threads;
  cfg.decode_sequences_max = o.decode_sequences_max;
  cfg.kv_dtype = engine::parse_kv_dtype(o.kv_dtype);
  cfg.decode_step_delay_ms = o.decode_step_delay_ms;
  cfg.prefill_chunk_delay_ms = o.prefill_chunk_delay_ms;
  actors::node_options opts;
  opts.controller_host = o.join.substr(0, colon);
  opts.controller_port = std::uint16_t(port);
  opts.profile = o.profile;
  opts.prefill = o.role == "prefill" || o.role == "both";
  opts.decode = o.role == "decode" || o.role == "both";
  if (!opts.prefill && !opts.decode)
    throw CLI::ValidationError("--role", "prefill, decode or both, got '" + o.role + "'");
  auto pid = getpid();
  opts.on_event = [pid](const std::string& text) {
    static std::mutex mutex;
    std::lock_guard guard{mutex};
    std::fputs(fmt::format("node pid {}: {}\n", pid, text).c_str(), stdout);
    std::fflush(stdout);
    if (text.rfind("controller gone", 0) == 0) {
      // Teardown is bounded: after a peer node was SIGKILLed, CAF 0.17 can keep a reference
      // to one of this node's detached actors and the actor system's destructor would wait
      // for its thread forever. The node has nothing left to serve, so it exits regardless.
      std::thread([pid] {
        std::this_thread::sleep_for(std::chrono::seconds(2));
        std::fputs(fmt::format("node pid {}: teardown stuck; exiting\n", pid).c_str(), stdout);
        std::fflush(stdout);
        std::_Exit(0);
      }).detach();
    }
  };
  actors::run_node(cfg, opts);
}

void setup_node(CLI::App& app) {
  auto o = std::make_shared<node_cli>();
  o->model = default_models_dir() + "/stories260K.bin";
  o->tokenizer = default_models_dir() + "/tok512.bin";
  auto* cmd = app.add_subcommand("node", "Run one node of a multi-process cluster");
  cmd->add_option("--join", o->join, "The controller's HOST:PORT")->required();
  cmd->add_option("--profile", o->profile, "Hardware profile: trainium2, wse3, cpu")
      ->capture_default_str();
  cmd->add_option("--role", o->role, "prefill, decode or both")->capture_default_str();
  cmd->add_option("--transport", o->transport,
                  "KV transport: zmq+tcp, zmq+ipc, fabric+shm, fabric+tcp, or a full address")
      ->capture_default_str();
  cmd->add_option("--model,-m", o->model, "Model file (the controller's)")->capture_default_str();
  cmd->add_option("--tokenizer,-z", o->tokenizer, "llama2.c tokenizer")->capture_default_str();
  cmd->add_option("--threads", o->threads, "Engine threads per shard / lane")
      ->capture_default_str();
  cmd->add_option("--decode-sequences", o->decode_sequences_max,
                  "Full-context sequences the decode lane's KV pool holds")
      ->capture_default_str();
  add_kv_dtype_option(cmd, o->kv_dtype,
                      "; every node of a cluster must agree (the controller refuses a mix)");
  cmd->add_option("--slow-decode-ms", o->decode_step_delay_ms,
                  "Fault injection: sleep this long before each decode step")
      ->capture_default_str();
  cmd->add_option("--slow-prefill-ms", o->prefill_chunk_delay_ms,
                  "Fault injection: sleep this long before each prefill chunk")
      ->capture_default_str();
  cmd->callback([o] { run_node_command(*o); });
}

const register_command reg{&setup_node};

} // namespace

} // namespace duet::apps
