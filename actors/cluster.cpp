#include "actors/cluster.hpp"

#include "actors/controller.hpp"
#include "actors/errors.hpp"
#include "actors/fabric_messages.hpp"
#include "actors/kv_link.hpp"
#include "actors/remote_cluster.hpp"
#include "actors/remote_node.hpp"
#include "actors/request_actor.hpp"
#include "engine/error.hpp"
#include "engine/kv_dtype.hpp"

#include <caf/all.hpp>
#include <caf/io/all.hpp>

#include <fmt/core.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <unistd.h>

namespace duet::actors {

namespace {

std::atomic<std::uint64_t> cluster_serial{0};

/// CAF settings for an embedded cluster: few workers that sleep when idle (the sharing
/// policy waits on a condition variable; work stealing polls), engine work on detached actors.
struct fabric_system_config : caf::actor_system_config {
  /// `remote`: load the middleman and register every message type (multi-process).
  explicit fabric_system_config(int workers, bool remote = false) {
    set("scheduler.policy", caf::atom("sharing"));
    set("scheduler.max-threads", std::max(1, workers));
    set("logger.verbosity", caf::atom("quiet"));
    add_fabric_error_category(*this);
    if (remote) {
      load<caf::io::middleman>();
      add_fabric_message_types(*this);
    }
  }
};

/// The model and the shared context every process of a cluster loads the same way.
std::shared_ptr<fabric_context> make_context(const cluster_config& config) {
  std::shared_ptr<fabric_context> ctx;
  try {
    ctx = std::make_shared<fabric_context>(
        engine::open_model(config.model_path, config.tokenizer_path), config.faults);
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("cluster: cannot load model: {}", e.what()));
  }
  ctx->config = config;
  ctx->stop_tokens.push_back(ctx->model.tok.eos_id());
  // llama2.c models end a story with BOS, as run.c stops on it.
  if (ctx->model.format == engine::model_format::llama2c)
    ctx->stop_tokens.push_back(ctx->model.tok.bos_id());
  ctx->transport_label = config.transport;
  return ctx;
}

/// Nodes that joined a controller, handed from the registrar actor to the constructor.
struct join_board {
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<node_hello> nodes;
  int expected = 0;
  caf::actor controller; ///< set once the cluster started: later joins go to it
};

/// The published actor nodes join through: each hello gets the next node id until the
/// expected number joined. Later joins go to the controller, which lets a node take a dead
/// node's place (controller.hpp) or refuses it; none is accepted while the cluster starts.
caf::behavior registrar_impl(caf::event_based_actor* self, std::shared_ptr<join_board> board) {
  return {
      [=](join_atom, node_hello& hello) -> caf::result<std::int32_t> {
        std::lock_guard guard{board->mutex};
        if (board->controller) {
          auto rp = self->make_response_promise();
          rp.delegate(board->controller, join_atom::value, std::move(hello));
          return rp;
        }
        if (int(board->nodes.size()) >= board->expected)
          return make_error(fabric_errc::overloaded,
                            fmt::format("controller: all {} nodes joined and the cluster is "
                                        "starting; join again once it serves, to replace a "
                                        "dead node",
                                        board->expected));
        board->nodes.push_back(std::move(hello));
        board->changed.notify_all();
        return std::int32_t(board->nodes.size() - 1);
      },
  };
}

model_footprint footprint_of(const engine::model_weights& w, const cluster_config& cfg) {
  model_footprint f;
  f.n_layers = w.config.n_layers;
  double total = double(w.token_embedding.bytes()) + double(w.rms_final.bytes());
  if (w.classifier.data != w.token_embedding.data) total += double(w.classifier.bytes());
  for (const auto& l : w.layers)
    total += double(l.rms_att.bytes() + l.wq.bytes() + l.wk.bytes() + l.wv.bytes() + l.wo.bytes() +
                    l.rms_ffn.bytes() + l.w1.bytes() + l.w2.bytes() + l.w3.bytes());
  f.weight_bytes_total = total;
  f.kv_bytes_per_token = double(w.config.n_layers) * 2.0 *
                         double(engine::row_bytes(engine::resolve_kv_dtype(cfg.kv_dtype, w),
                                                  static_cast<std::size_t>(w.config.kv_dim())));
  f.kv_budget_tokens = w.config.seq_len * std::max(1, cfg.decode_sequences_max);
  return f;
}

std::string listen_address_for(const std::string& transport, std::uint64_t serial, int node) {
  if (transport == "inproc")
    return fmt::format("inproc://duet-{}-{}-lane-{}", getpid(), serial, node);
  if (transport == "zmq+tcp" || transport == "zmq:tcp" || transport == "zmq")
    return "zmq+tcp://127.0.0.1:0";
  if (transport == "zmq+ipc" || transport == "zmq:ipc")
    return fmt::format("zmq+ipc:///tmp/duet-{}-{}-lane-{}", getpid(), serial, node);
  if (transport == "fabric+shm" || transport == "fabric:shm") return "fabric+shm://";
  if (transport == "fabric+tcp" || transport == "fabric:tcp") return "fabric+tcp://127.0.0.1";
  if (transport.find("://") != std::string::npos) return transport;
  throw std::invalid_argument(
      fmt::format("unknown transport '{}' (inproc, zmq+tcp, zmq+ipc, fabric+shm, fabric+tcp, "
                  "actor)",
                  transport));
}

class embedded_cluster final : public cluster {
public:
  explicit embedded_cluster(cluster_config config)
      : serial_(++cluster_serial), system_config_(config.caf_workers) {
    ctx_ = make_context(config);
    model_name_ = std::filesystem::path(config.model_path).stem().string();
    if (config.prefill_nodes < 0 || config.decode_nodes < 1)
      throw std::invalid_argument(
          fmt::format("cluster: need >= 1 decode node and >= 0 prefill nodes, got prefill={} "
                      "decode={}",
                      config.prefill_nodes, config.decode_nodes));
    auto prefill_profile = find_profile(config.prefill_profile);
    auto decode_profile = find_profile(config.decode_profile);
    if (!prefill_profile || !decode_profile)
      throw std::invalid_argument(
          fmt::format("cluster: unknown profile '{}' (known: trainium2, "
                      "wse3, cpu)",
                      !prefill_profile ? config.prefill_profile : config.decode_profile));
    std::vector<node_spec> nodes;
    for (int i = 0; i < config.prefill_nodes + config.decode_nodes; ++i) {
      node_spec n;
      n.node_id = i;
      n.prefill = i < config.prefill_nodes;
      n.decode = !n.prefill;
      n.profile = n.prefill ? *prefill_profile : *decode_profile;
      nodes.push_back(std::move(n));
    }
    auto spec = plan(config, std::move(nodes));

    if (config.transport != "actor") {
      for (auto& n : spec.nodes) {
        if (!n.decode) continue;
        auto name = decode_lane_name(n.node_id);
        auto ctx = ctx_;
        auto pump = kv_pump::start(ctx_, listen_address_for(config.transport, serial_, n.node_id),
                                   [ctx, name] { return ctx->registry.handle(name); });
        if (!pump) throw std::runtime_error("cluster: " + describe(pump.error()));
        n.kv_address = (*pump)->address();
        pumps_.push_back(std::move(*pump));
      }
    }
    system_ = std::make_unique<caf::actor_system>(system_config_);
    controller_ = spawn_controller(*system_, ctx_, std::move(spec));
  }

  /// The controller process of a multi-process cluster (remote_cluster.hpp).
  embedded_cluster(cluster_config config, const controller_options& options)
      : serial_(++cluster_serial), system_config_(config.caf_workers, true) {
    ctx_ = make_context(config);
    ctx_->on_event = options.on_event;
    model_name_ = std::filesystem::path(config.model_path).stem().string();
    if (options.nodes < 1)
      throw std::invalid_argument(fmt::format("controller: need >= 1 node, got {}", options.nodes));
    system_ = std::make_unique<caf::actor_system>(system_config_);
    auto board = std::make_shared<join_board>();
    board->expected = options.nodes;
    registrar_ = system_->spawn(registrar_impl, board);
    auto port =
        system_->middleman().publish(registrar_, options.port, options.listen_host.c_str(), true);
    if (!port) {
      shutdown();
      throw std::runtime_error(fmt::format("controller: cannot listen on {}:{}: {}",
                                           options.listen_host, options.port,
                                           system_->render(port.error())));
    }
    if (options.on_listening) options.on_listening(*port);
    auto stopped = [&] { return options.stop_requested && options.stop_requested(); };
    std::vector<node_hello> hellos;
    {
      const auto join_deadline =
          std::chrono::steady_clock::now() + std::chrono::milliseconds(options.join_timeout_ms);
      std::unique_lock lock{board->mutex};
      bool joined = false;
      bool stop = false;
      // In slices, so a stop request is seen within ~50 ms.
      do {
        joined =
            board->changed.wait_until(lock,
                                      std::min(join_deadline, std::chrono::steady_clock::now() +
                                                                  std::chrono::milliseconds(50)),
                                      [&] { return int(board->nodes.size()) >= board->expected; });
        stop = !joined && stopped();
      } while (!joined && !stop && std::chrono::steady_clock::now() < join_deadline);
      if (!joined) {
        auto n = board->nodes.size();
        lock.unlock();
        shutdown();
        if (stop)
          throw std::runtime_error(fmt::format(
              "controller: stopped while waiting for nodes ({} of {} joined)", n, options.nodes));
        throw std::runtime_error(fmt::format("controller: {} of {} nodes joined within {} ms", n,
                                             options.nodes, options.join_timeout_ms));
      }
      hellos = board->nodes;
    }
    // One K and V type for the whole cluster: a decode lane refuses segments of another, so
    // a mix would fail every disaggregated request. The plan sizes the pools with it.
    for (std::size_t i = 1; i < hellos.size(); ++i)
      if (hellos[i].kv_dtype != hellos[0].kv_dtype) {
        shutdown();
        throw std::invalid_argument(fmt::format(
            "controller: node {} (pid {}) stores K and V as {}, node 0 (pid {}) as {}: start "
            "every `duet node` with the same --kv-dtype (auto resolves the same way for the "
            "same model file)",
            i, hellos[i].pid, hellos[i].kv_dtype, hellos[0].pid, hellos[0].kv_dtype));
      }
    if (!hellos.empty()) {
      const auto type = hellos[0].kv_dtype;
      if (type == "f32" || type == "f16") {
        config.kv_dtype = engine::parse_kv_dtype(type);
        ctx_->config.kv_dtype = config.kv_dtype;
      }
    }
    std::vector<node_spec> nodes;
    for (std::size_t i = 0; i < hellos.size(); ++i) {
      const auto& h = hellos[i];
      auto profile = find_profile(h.profile);
      if (!profile) {
        shutdown();
        throw std::invalid_argument(
            fmt::format("controller: node {} has unknown profile '{}'", i, h.profile));
      }
      node_spec n;
      n.node_id = int(i);
      n.prefill = h.prefill;
      n.decode = h.decode;
      n.profile = *profile;
      n.kv_address = h.kv_address;
      n.kv_dtype = h.kv_dtype;
      n.agent = h.agent;
      if (options.on_event)
        options.on_event(fmt::format("node {} joined pid {} profile {} roles {}{} kv {} ({})", i,
                                     h.pid, h.profile, h.prefill ? "prefill" : "",
                                     h.prefill && h.decode ? "+decode" : (h.decode ? "decode" : ""),
                                     h.kv_address.empty() ? "-" : h.kv_address, h.kv_dtype));
      nodes.push_back(std::move(n));
    }
    controller_spec spec;
    try {
      spec = plan(config, std::move(nodes));
    } catch (...) {
      shutdown();
      throw;
    }
    spec.heartbeat_timeout_ms = options.heartbeat_timeout_ms;
    spec.heartbeat_interval_ms = options.heartbeat_interval_ms;
    controller_ = spawn_controller(*system_, ctx_, std::move(spec));
    for (std::size_t i = 0; i < hellos.size(); ++i)
      caf::anon_send(hellos[i].agent, start_atom::value, controller_, std::int32_t(i),
                     std::int32_t(options.heartbeat_interval_ms));
    // Slots on nodes are spawned by request: serve once every one of them is up (bounded).
    auto deadline =
        std::chrono::steady_clock::now() + std::chrono::milliseconds(options.join_timeout_ms);
    while (true) {
      auto entries = ctx_->registry.snapshot();
      bool all = !entries.empty();
      for (const auto& e : entries) all = all && e.alive;
      if (all) break;
      if (stopped()) {
        shutdown();
        throw std::runtime_error("controller: stopped while the nodes started their shards and "
                                 "lanes");
      }
      if (std::chrono::steady_clock::now() > deadline) {
        shutdown();
        throw std::runtime_error(
            fmt::format("controller: the nodes did not start their shards and lanes within {} ms",
                        options.join_timeout_ms));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    // Serving: a node that joins from now on may take a dead node's place.
    std::lock_guard guard{board->mutex};
    board->controller = controller_;
  }

  /// Checks every decode node's fit, plans the prefill pipelines over the prefill nodes, and
  /// sizes the metrics: the same for embedded and multi-process clusters.
  controller_spec plan(const cluster_config& config, std::vector<node_spec> nodes) {
    const auto& weights = *ctx_->model.weights;
    auto footprint = footprint_of(weights, config);
    controller_spec spec;
    std::vector<node_view> views;
    int prefill_nodes = 0;
    for (auto& n : nodes) {
      if (n.decode) {
        // A decode lane holds every layer and its whole KV pool.
        if (auto err = check_fit(n.profile, footprint, footprint.n_layers))
          throw std::runtime_error(
              fmt::format("cluster: decode node {}: {}", n.node_id, describe(err)));
      }
      prefill_nodes += n.prefill ? 1 : 0;
      node_view v;
      v.node_id = n.node_id;
      v.profile = n.profile;
      v.prefill = n.prefill;
      v.decode = n.decode;
      views.push_back(v);
      spec.nodes.push_back(std::move(n));
    }
    if (prefill_nodes > 0) {
      auto plans = plan_prefill_pipelines(views, footprint, config.prefill_split);
      if (!plans) throw std::runtime_error("cluster: " + describe(plans.error()));
      spec.pipelines = std::move(*plans);
    }
    ctx_->metrics = make_fabric_metrics(config.metrics, config.transport, int(spec.nodes.size()));
    return spec;
  }

  ~embedded_cluster() override { shutdown(); }

  void shutdown() {
    if (!system_) return;
    std::vector<caf::actor> live;
    {
      std::lock_guard guard{mutex_};
      for (auto& [id, handle] : requests_) live.push_back(handle);
    }
    for (auto& handle : live) caf::anon_send(handle, cancel_atom::value);
    for (auto& pump : pumps_) pump->stop(); // no more forwarding into the actor system
    if (controller_) caf::anon_send_exit(controller_, caf::exit_reason::user_shutdown);
    controller_ = caf::actor{};
    if (registrar_) caf::anon_send_exit(registrar_, caf::exit_reason::user_shutdown);
    registrar_ = caf::actor{};
    system_.reset(); // waits for every actor (the shards close their senders)
    pumps_.clear();  // receivers last
  }

  void submit(completion_request request, completion_callbacks callbacks) override {
    auto id = next_id_.fetch_add(1) + 1;
    std::string name = request.request_id;
    {
      std::lock_guard guard{mutex_};
      ids_[name] = id;
    }
    auto handle = spawn_request_actor(*system_, ctx_, controller_, id, std::move(request),
                                      std::move(callbacks), [this, name, id] { forget(name, id); });
    std::lock_guard guard{mutex_};
    // The actor may already have finished (a request refused at once): keep only live ones.
    auto it = ids_.find(name);
    if (it != ids_.end() && it->second == id) requests_[name] = handle;
  }

  void cancel(const std::string& request_id) override {
    caf::actor handle;
    {
      std::lock_guard guard{mutex_};
      auto it = requests_.find(request_id);
      if (it == requests_.end()) return;
      handle = it->second;
    }
    caf::anon_send(handle, cancel_atom::value);
  }

  bool ready() const override {
    for (const auto& e : ctx_->registry.snapshot())
      if (e.kind == actor_kind::decode_lane && e.alive) return true;
    return false;
  }

  int context_length() const override { return ctx_->model.weights->config.seq_len; }

  const engine::tokenizer& tokenizer() const override { return ctx_->model.tok; }
  std::string model_name() const override { return model_name_; }

  engine::dtype kv_dtype() const override { return ctx_->kv_type(); }
  std::size_t kv_blocks_in_use() const override {
    std::int64_t total = 0;
    for (const auto& e : ctx_->registry.snapshot()) total += e.blocks_used->load();
    return std::size_t(total);
  }

  fault_injector& faults() override { return ctx_->faults; }

  bool kill_actor(const std::string& name) override {
    auto handle = ctx_->registry.handle(name);
    if (!handle) return false;
    caf::anon_send_exit(handle, caf::exit_reason::kill);
    return true;
  }

  std::string kill_random(actor_kind kind) override {
    std::vector<actor_entry> candidates;
    for (auto& e : ctx_->registry.snapshot())
      if (e.kind == kind && e.alive) candidates.push_back(e);
    if (candidates.empty()) return {};
    auto& victim = candidates[ctx_->faults.pick(candidates.size())];
    caf::anon_send_exit(victim.handle, caf::exit_reason::kill);
    return victim.name;
  }

  std::vector<std::string> crash_node(int node) override { return kill_node_actors(*ctx_, node); }

  std::vector<std::string> actor_names() const override {
    std::vector<std::string> out;
    for (const auto& e : ctx_->registry.snapshot())
      if (e.alive) out.push_back(e.name);
    return out;
  }

  cluster_stats stats() const override {
    const auto& c = ctx_->counters;
    cluster_stats s;
    s.requests_started = c.requests_started.load();
    s.requests_finished = c.requests_finished.load();
    s.integrated = c.integrated.load();
    s.disaggregated = c.disaggregated.load();
    s.actor_restarts = c.actor_restarts.load();
    s.request_retries = c.request_retries.load();
    s.kv_segments_sent = c.kv_segments_sent.load();
    s.kv_bytes_sent = c.kv_bytes_sent.load();
    s.kv_send_seconds = double(c.kv_send_ns.load()) * 1e-9;
    s.kv_segments_rejected = c.kv_segments_rejected.load();
    return s;
  }

private:
  void forget(const std::string& name, std::uint64_t id) {
    std::lock_guard guard{mutex_};
    auto it = ids_.find(name);
    if (it == ids_.end() || it->second != id) return;
    ids_.erase(it);
    requests_.erase(name);
  }

  std::uint64_t serial_;
  fabric_system_config system_config_;
  std::shared_ptr<fabric_context> ctx_;
  std::string model_name_;
  std::vector<std::unique_ptr<kv_pump>> pumps_;
  std::unique_ptr<caf::actor_system> system_;
  caf::actor controller_;
  caf::actor registrar_; ///< multi-process: what nodes join through
  std::atomic<std::uint64_t> next_id_{0};
  std::mutex mutex_;
  std::map<std::string, caf::actor> requests_;
  std::map<std::string, std::uint64_t> ids_;
};

} // namespace

std::unique_ptr<cluster> make_embedded_cluster(cluster_config config) {
  return std::make_unique<embedded_cluster>(std::move(config));
}

std::unique_ptr<cluster> make_controller_cluster(cluster_config config,
                                                 controller_options options) {
  return std::make_unique<embedded_cluster>(std::move(config), options);
}

void run_node(cluster_config config, node_options options) {
  if (!options.prefill && !options.decode)
    throw std::invalid_argument("node: needs the prefill role, the decode role or both");
  if (!find_profile(options.profile))
    throw std::invalid_argument(
        fmt::format("node: unknown profile '{}' (known: trainium2, wse3, cpu)", options.profile));
  if (config.transport == "inproc" || config.transport == "actor")
    throw std::invalid_argument(
        fmt::format("node: transport '{}' does not cross processes (zmq+tcp, zmq+ipc, fabric+shm, "
                    "fabric+tcp)",
                    config.transport));
  auto serial = ++cluster_serial;
  auto ctx = make_context(config);
  ctx->on_event = options.on_event;
  ctx->send_log.enable(); // reported to the controller with every heartbeat
  // The KV receiver is bound before joining: its concrete address travels in the hello. It
  // forwards to whichever decode lane this node currently runs.
  std::unique_ptr<kv_pump> pump;
  if (options.decode) {
    auto started = kv_pump::start(ctx, listen_address_for(config.transport, serial, 0), [ctx] {
      for (const auto& e : ctx->registry.snapshot())
        if (e.kind == actor_kind::decode_lane && e.alive) return e.handle;
      return caf::actor{};
    });
    if (!started) throw std::runtime_error("node: " + describe(started.error()));
    pump = std::move(*started);
  }
  fabric_system_config system_config{config.caf_workers, true};
  std::string failure;
  {
    caf::actor_system sys{system_config};
    auto registrar = sys.middleman().remote_actor(options.controller_host, options.controller_port);
    if (!registrar) {
      failure =
          fmt::format("node: cannot reach the controller at {}:{}: {}", options.controller_host,
                      options.controller_port, sys.render(registrar.error()));
    } else {
      auto agent = spawn_node_agent(sys, ctx);
      node_hello hello;
      hello.pid = std::int32_t(getpid());
      hello.profile = options.profile;
      hello.prefill = options.prefill;
      hello.decode = options.decode;
      hello.kv_address = pump ? pump->address() : std::string{};
      hello.agent = agent;
      hello.kv_dtype = std::string(engine::dtype_name(ctx->kv_type()));
      caf::scoped_actor self{sys};
      self->request(*registrar, std::chrono::seconds(10), join_atom::value, hello)
          .receive(
              [&](std::int32_t node) {
                if (options.on_event) options.on_event(fmt::format("joined as node {}", node));
              },
              [&](caf::error& err) {
                failure = fmt::format("node: join refused: {}", sys.render(err));
              });
      if (!failure.empty()) {
        self->send_exit(agent, caf::exit_reason::user_shutdown);
      } else {
        // Serve until the agent quits (the controller went away) or the connection to the
        // controller breaks before it was started.
        self->monitor(agent);
        self->monitor(*registrar);
        bool agent_down = false;
        self->receive([&](caf::down_msg& dm) { agent_down = dm.source == agent.address(); });
        if (!agent_down) {
          self->send_exit(agent, caf::exit_reason::user_shutdown);
          self->receive_while([&] { return !agent_down; })(
              [&](caf::down_msg& dm) { agent_down = dm.source == agent.address(); });
        }
        if (options.on_event) options.on_event("controller gone; node stopping");
      }
    }
    if (pump) pump->stop(); // no more forwarding into the actor system
  }                         // the actor system waits for every shard and lane here
  pump.reset();
  if (!failure.empty()) throw std::runtime_error(failure);
}

void parse_local_shape(const std::string& text, cluster_config& config) {
  std::size_t start = 0;
  while (start <= text.size()) {
    auto end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    auto part = text.substr(start, end - start);
    auto eq = part.find('=');
    if (eq == std::string::npos)
      throw std::invalid_argument(fmt::format("'{}' in '{}' is not key=value", part, text));
    auto key = part.substr(0, eq);
    int value = 0;
    try {
      std::size_t used = 0;
      value = std::stoi(part.substr(eq + 1), &used);
      if (used != part.size() - eq - 1) throw std::invalid_argument("trailing");
    } catch (const std::exception&) {
      throw std::invalid_argument(fmt::format("'{}' in '{}' is not a number", part, text));
    }
    if (key == "prefill")
      config.prefill_nodes = value;
    else if (key == "decode")
      config.decode_nodes = value;
    else if (key == "split")
      config.prefill_split = value;
    else
      throw std::invalid_argument(
          fmt::format("unknown key '{}' in '{}' (prefill, decode, split)", key, text));
    start = end + 1;
  }
}

} // namespace duet::actors
