// `duet serve --nodes-listen`: the OpenAI HTTP API in front of a multi-process cluster. The real
// binary runs `duet serve` (the controller) and `duet node` processes (a prefill node and a
// decode node; KV moves between them over zmq+tcp or fabric+shm); requests go over real HTTP.
// References come from the engine's own greedy loop and from `duet generate`. Every wait is
// bounded; every child process is stopped and reaped by its destructor.
#include "apps/config.hpp"
#include "greedy_reference.hpp"
#include "http_test_client.hpp"
#include "prometheus_text.hpp"
#include "streamed_completion.hpp"
#include "tests/support/line_reader.hpp"
#include "tests/support/models.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <memory>
#include <optional>
#include <poll.h>
#include <spawn.h>
#include <sstream>
#include <string>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

extern char** environ;

using json = nlohmann::json;

namespace {

using clock_type = std::chrono::steady_clock;

/// Bound of every wait: generous for ASan on a busy 2-core machine; a healthy step takes well
/// under a second.
constexpr std::chrono::seconds step_timeout{60};

/// A `duet` child process: stdout on a pipe read line by line, stderr into a log file (shown
/// when a check fails). The destructor SIGKILLs and reaps it if it still runs.
class duet_process {
public:
  explicit duet_process(std::vector<std::string> args) {
    log_path_ = "/tmp/duet-serve-mp-test-" + std::to_string(getpid()) + "-" +
                std::to_string(counter()++) + ".log";
    int out[2];
    REQUIRE(pipe2(out, O_CLOEXEC) == 0);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
    posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, log_path_.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    args.insert(args.begin(), DUET_BINARY_DIR "/duet");
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    int rc = posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    close(out[1]);
    out_ = out[0];
    lines_ = duet::test::line_reader{out_};
    if (rc != 0) FAIL("cannot start " << argv[0] << ": " << std::strerror(rc));
  }
  duet_process(const duet_process&) = delete;
  duet_process& operator=(const duet_process&) = delete;

  ~duet_process() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (out_ >= 0) close(out_);
    std::remove(log_path_.c_str());
  }

  /// Reads stdout until a line starting with `prefix`; the rest of that line, or nullopt at
  /// end of output or after the timeout.
  std::optional<std::string> wait_for_line(const std::string& prefix) {
    const auto deadline = clock_type::now() + step_timeout;
    while (true) {
      auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_type::now());
      auto line = lines_.next(std::max(left, std::chrono::milliseconds{0}));
      if (!line) return std::nullopt;
      if (line->rfind(prefix, 0) == 0) return line->substr(prefix.size());
    }
  }

  void signal(int sig) { ::kill(pid_, sig); }
  pid_t pid() const { return pid_; }

  /// Waits (bounded) for the process to exit: its exit status (128 + signal if killed by
  /// one), or -1 if it still runs.
  int wait_exit() {
    const auto deadline = clock_type::now() + step_timeout;
    while (clock_type::now() < deadline) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return -1;
  }

  /// What the process wrote to stderr so far.
  std::string log() const {
    std::ifstream in{log_path_};
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }

private:
  static int& counter() {
    static int n = 0;
    return n;
  }
  pid_t pid_ = -1;
  int out_ = -1;
  duet::test::line_reader lines_{-1};
  std::string log_path_;
};

std::vector<std::string> model_args() {
  return {"--model", duet::test::model_file("stories260K.bin"), "--tokenizer",
          duet::test::model_file("tok512.bin")};
}

std::vector<std::string> with(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

/// A node process joining `address` with `role`, KV over `transport`.
std::unique_ptr<duet_process> start_node(const std::string& address, const std::string& role,
                                         const std::string& transport) {
  return std::make_unique<duet_process>(
      with({"node", "--join", address, "--role", role, "--transport", transport}, model_args()));
}

duet::apps::option_values with_flag(duet::apps::option_values values, const std::string& flag,
                                    const std::string& value) {
  values[flag] = {value};
  return values;
}

} // namespace

TEST_CASE("duet serve --nodes-listen serves a prefill node and a decode node process with the "
          "greedy tokens of the engine and of duet generate") {
  const std::string transport = GENERATE(as<std::string>{}, "zmq+tcp", "fabric+shm");
  INFO("node transport " << transport);
  const std::string prompt = "Once upon a time";
  const int steps = 40;
  std::vector<int> prompt_tokens;
  const auto reference = duet::test::engine_greedy(prompt, steps, &prompt_tokens);
  REQUIRE(reference.size() == static_cast<std::size_t>(steps)); // no early stop: unambiguous

  // Disaggregated placement: every request's KV crosses from the prefill node process to the
  // decode node process.
  duet_process serve{with({"serve", "--nodes-listen", "127.0.0.1:0", "--nodes", "2", "--port", "0",
                           "--placement", "disaggregated"},
                          model_args())};
  auto address = serve.wait_for_line("nodes listening on ");
  INFO("serve log:\n" << serve.log());
  REQUIRE(address);
  auto prefill = start_node(*address, "prefill", transport);
  auto decode = start_node(*address, "decode", transport);
  auto url = serve.wait_for_line("listening on http://127.0.0.1:");
  INFO("serve log:\n" << serve.log());
  REQUIRE(url);
  const int port = std::stoi(*url);
  CHECK(duet::test::http_get(port, "/ready").status == 200);

  const std::string body = json{
      {"model", "stories260K"},
      {"prompt", prompt},
      {"max_tokens", steps},
      {"temperature", 0},
      {"return_token_ids",
       true}}.dump();
  auto plain = duet::test::http_post(port, "/v1/completions", body);
  INFO(plain.body);
  REQUIRE(plain.status == 200);
  auto pj = plain.json();
  CHECK(pj["choices"][0]["token_ids"].get<std::vector<int>>() == reference);
  CHECK(pj["choices"][0]["finish_reason"] == "length");
  CHECK(pj["usage"]["completion_tokens"] == steps);
  const std::string text = pj["choices"][0]["text"];
  CHECK(duet::test::run_generate(prompt, steps) == prompt + text + "\n");

  auto stream_body = json::parse(body);
  stream_body["stream"] = true;
  auto s = duet::test::collect(duet::test::http_stream(port, "/v1/completions", stream_body.dump()),
                               false);
  CHECK(s.done);
  CHECK(s.ids == reference);
  CHECK(s.text == text);
  CHECK(s.finish == "length");

  // The controller placed both requests disaggregated (on the two node processes).
  auto m = duet::test::parse_prometheus_text(duet::test::http_get(port, "/metrics").body);
  CHECK(m.value("duet_placement_decisions_total", {{"mode", "disaggregated"}}) == 2);
  CHECK(m.value("duet_requests_total", {{"outcome", "length"}}) == 2);

  // The nodes' own figures reach the controller's /metrics with their heartbeats: the KV the
  // prefill node sent (every layer's K and V of every prompt token, f32, for both requests)
  // and the nodes' KV pools, all of it free again once both requests ended.
  auto model = duet::engine::open_model(duet::test::model_file("stories260K.bin"),
                                        duet::test::model_file("tok512.bin"));
  const auto& cfg = model.weights->config;
  const double kv_bytes = 2.0 * cfg.n_layers * double(prompt_tokens.size()) * 2 *
                          (cfg.dim / cfg.n_heads * cfg.n_kv_heads) * 4;
  const auto deadline = clock_type::now() + step_timeout;
  // Each node reports with its own heartbeat: wait (bounded) until both have.
  while (clock_type::now() < deadline &&
         (m.value("duet_kv_bytes_transferred_total").value_or(0) < kv_bytes ||
          m.value("duet_kv_blocks_used").value_or(-1) != 0)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    m = duet::test::parse_prometheus_text(duet::test::http_get(port, "/metrics").body);
  }
  CHECK(m.value("duet_kv_bytes_transferred_total") == kv_bytes);
  CHECK(m.value("duet_kv_transfer_seconds_count") == 2.0 * cfg.n_layers); // one chunk each
  CHECK(m.value("duet_kv_blocks_used") == 0);
  CHECK(m.value("duet_kv_blocks_free").value_or(0) > 0); // the nodes' pools, reported

  // SIGTERM: serve stops cleanly, and the nodes return once their controller is gone.
  serve.signal(SIGTERM);
  CHECK(serve.wait_exit() == 0);
  INFO("prefill node log:\n" << prefill->log() << "decode node log:\n" << decode->log());
  CHECK(prefill->wait_exit() == 0);
  CHECK(decode->wait_exit() == 0);
}

TEST_CASE("duet serve --nodes-listen exits with a clear error when a node does not join in time") {
  duet_process serve{with({"serve", "--nodes-listen", "127.0.0.1:0", "--nodes", "2", "--port", "0",
                           "--nodes-join-timeout-ms", "2000"},
                          model_args())};
  auto address = serve.wait_for_line("nodes listening on ");
  INFO("serve log:\n" << serve.log());
  REQUIRE(address);
  // One node joins; the second never comes.
  auto decode = start_node(*address, "decode", "zmq+tcp");
  // "<pid>: joined as node 0", or an error (on stderr) when it came after serve gave up.
  auto node_said = decode->wait_for_line("node pid ");
  const bool joined = node_said && node_said->find("joined as node") != std::string::npos;
  CHECK(serve.wait_exit() == 1);
  const auto log = serve.log();
  INFO("serve log:\n" << log << "node log:\n" << decode->log());
  if (joined) {
    CHECK(log.find("duet: error: controller: 1 of 2 nodes joined within 2000 ms") !=
          std::string::npos);
    CHECK(decode->wait_exit() == 0); // it returns once the controller is gone
  } else {
    // Only on a machine so loaded that starting the node took longer than the timeout.
    WARN("the node did not join within 2000 ms; checking the 0-of-2 message instead");
    CHECK(log.find("duet: error: controller: 0 of 2 nodes joined within 2000 ms") !=
          std::string::npos);
  }
  CHECK(log.find("duet node --join " + *address) != std::string::npos);
  CHECK(log.find("listening on http://") == std::string::npos);
}

TEST_CASE("duet serve --nodes-listen refuses a cluster whose nodes store K and V as different "
          "types, naming them") {
  duet_process serve{with({"serve", "--nodes-listen", "127.0.0.1:0", "--nodes", "2", "--port", "0",
                           "--nodes-join-timeout-ms", "30000"},
                          model_args())};
  auto address = serve.wait_for_line("nodes listening on ");
  INFO("serve log:\n" << serve.log());
  REQUIRE(address);
  // stories260K is f32: auto gives the decode node f32 K and V; the prefill node asks for f16.
  duet_process prefill{with({"node", "--join", *address, "--role", "prefill", "--transport",
                             "zmq+tcp", "--kv-dtype", "f16"},
                            model_args())};
  auto decode = start_node(*address, "decode", "zmq+tcp");
  CHECK(serve.wait_exit() == 1);
  const auto log = serve.log();
  INFO("serve log:\n" << log);
  CHECK(log.find("duet: error: controller: node 1 (pid ") != std::string::npos);
  const bool f16_first = log.find("as f32, node 0 (pid " + std::to_string(prefill.pid()) +
                                  ") as f16") != std::string::npos;
  const bool f32_first = log.find("as f16, node 0 (pid " + std::to_string(decode->pid()) +
                                  ") as f32") != std::string::npos;
  CHECK((f16_first || f32_first)); // whichever joined first is node 0
  CHECK(log.find("start every `duet node` with the same --kv-dtype") != std::string::npos);
  CHECK(log.find("listening on http://") == std::string::npos);
  CHECK(prefill.wait_exit() == 0); // both return once their controller is gone
  CHECK(decode->wait_exit() == 0);
}

TEST_CASE("duet serve --nodes-listen stops cleanly on SIGTERM while it waits for nodes") {
  duet_process serve{with({"serve", "--nodes-listen", "127.0.0.1:0", "--nodes", "1", "--port", "0",
                           "--nodes-join-timeout-ms", "600000"},
                          model_args())};
  REQUIRE(serve.wait_for_line("nodes listening on "));
  serve.signal(SIGTERM);
  CHECK(serve.wait_exit() == 0); // bounded by the test's wait, far below the join timeout
  INFO("serve log:\n" << serve.log());
  CHECK(serve.log().find("event=stopped") != std::string::npos);
}

TEST_CASE("duet serve refuses embedded-cluster options together with --nodes-listen and node "
          "options without it") {
  auto no_env = [](const char*) -> const char* { return nullptr; };
  auto refused = [&](const duet::apps::option_values& flags, const std::string& expected) {
    try {
      (void)duet::apps::resolve_serve_config("/m", flags, "", no_env);
      FAIL("no error, expected: " << expected);
    } catch (const std::runtime_error& e) {
      INFO(e.what());
      CHECK(std::string{e.what()}.find(expected) != std::string::npos);
    }
  };
  const duet::apps::option_values listen = {{"--nodes-listen", {"127.0.0.1:0"}}};
  refused(with_flag(listen, "--local", "prefill=2,decode=1"),
          "--local is for the embedded cluster");
  refused(with_flag(listen, "--transport", "zmq+tcp"), "--transport is for the embedded cluster");
  refused(with_flag(listen, "--engine-threads", "2"), "--engine-threads is for the embedded");
  refused({{"--nodes", {"3"}}}, "--nodes only applies with --nodes-listen");
  refused({{"--nodes-split", {"2"}}}, "--nodes-split only applies with --nodes-listen");
  refused({{"--nodes-listen", {"localhost"}}}, "--nodes-listen: expected HOST:PORT");
  refused({{"--nodes-listen", {"127.0.0.1:99999"}}}, "--nodes-listen: bad port");

  auto c = duet::apps::resolve_serve_config("/m",
                                            {{"--nodes-listen", {"0.0.0.0:7100"}},
                                             {"--nodes", {"3"}},
                                             {"--nodes-join-timeout-ms", {"1500"}},
                                             {"--nodes-split", {"2"}}},
                                            "", no_env);
  CHECK(c.nodes_listen == "0.0.0.0:7100");
  CHECK(c.nodes == 3);
  CHECK(c.nodes_join_timeout_ms == 1500);
  CHECK(c.nodes_split == 2);
  CHECK(duet::apps::parse_host_port(c.nodes_listen) ==
        std::pair<std::string, int>{"0.0.0.0", 7100});
  auto d = duet::apps::resolve_serve_config("/m", {}, "", no_env);
  CHECK(d.nodes_listen.empty()); // embedded by default
}
