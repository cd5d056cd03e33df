// The multi-process deployment: a `duet controller` and `duet node` processes (the real
// binary, as child processes), control over CAF's middleman, KV over zmq+tcp between node
// processes. Every wait is bounded; every child is killed and reaped at the end.
#include "actors/controller.hpp"
#include "tests/actors/fabric_support.hpp"
#include "tests/support/line_reader.hpp"

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

extern char** environ;

namespace {

using clock_type = std::chrono::steady_clock;

/// Generous for ASan builds on a busy 2-core machine; a healthy run takes well under a second
/// per step.
constexpr std::chrono::seconds step_timeout{30};

/// A child process with a pipe on its stdin and one on its stdout (stderr is inherited, so a
/// failing child explains itself in the test log).
class child_process {
public:
  explicit child_process(const std::vector<std::string>& args) {
    int in[2];
    int out[2];
    REQUIRE(pipe2(in, O_CLOEXEC) == 0);
    REQUIRE(pipe2(out, O_CLOEXEC) == 0);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, in[0], 0);
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    int rc = posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    close(in[0]);
    close(out[1]);
    in_ = in[1];
    out_ = out[0];
    lines_ = duet::test::line_reader{out_};
    REQUIRE(rc == 0);
  }
  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;

  ~child_process() {
    close_stdin();
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (out_ >= 0) close(out_);
  }

  pid_t pid() const { return pid_; }

  void write_line(const std::string& line) {
    auto text = line + "\n";
    REQUIRE(::write(in_, text.data(), text.size()) == ssize_t(text.size()));
  }

  void close_stdin() {
    if (in_ >= 0) close(in_);
    in_ = -1;
  }

  /// The next line of stdout, or nullopt at end of output or after `timeout`.
  std::optional<std::string> read_line(std::chrono::milliseconds timeout = step_timeout) {
    return lines_.next(timeout);
  }

  void kill(int sig) { ::kill(pid_, sig); }

  /// Waits (bounded) for the child to exit; its exit status, or -1 if it had to be killed.
  int wait_exit(std::chrono::milliseconds timeout = step_timeout) {
    auto deadline = clock_type::now() + timeout;
    while (clock_type::now() < deadline) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      usleep(10000);
    }
    return -1;
  }

private:
  pid_t pid_ = -1;
  int in_ = -1;
  int out_ = -1;
  duet::test::line_reader lines_{-1};
};

std::vector<std::string> words(const std::string& line) {
  std::istringstream in{line};
  std::vector<std::string> out;
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

/// The lines, one per line (for failure messages).
std::string joined(const std::vector<std::string>& lines) {
  std::string all;
  for (const auto& l : lines) all += l + "\n";
  return all;
}

std::string duet_binary() {
  return DUET_BINARY_DIR "/duet";
}

/// A controller and its node processes (by default one prefill node and two decode nodes), all
/// joined. Every node gets `node_args` too (fault injection: --slow-decode-ms, --slow-prefill-ms).
struct deployment {
  std::unique_ptr<child_process> controller;
  std::vector<std::unique_ptr<child_process>> nodes;
  std::map<int, pid_t> node_pids;        ///< node id -> pid, from the controller's join events
  std::map<int, std::string> node_roles; ///< node id -> "prefill" / "decode"
  std::vector<std::string> log;          ///< the controller's lines, for failure messages
  std::string address;                   ///< where nodes join (HOST:PORT)

  explicit deployment(int slow_decode_ms)
      : deployment({"prefill", "decode", "decode"},
                   {"--slow-decode-ms", std::to_string(slow_decode_ms)}) {}

  deployment(const std::vector<std::string>& roles, const std::vector<std::string>& node_args) {
    auto model = duet::test::model_file("stories260K.bin");
    auto tok = duet::test::model_file("tok512.bin");
    controller =
        std::make_unique<child_process>(std::vector<std::string>{duet_binary(),
                                                                 "controller",
                                                                 "--listen",
                                                                 "127.0.0.1:0",
                                                                 "--nodes",
                                                                 std::to_string(roles.size()),
                                                                 "--model",
                                                                 model,
                                                                 "--tokenizer",
                                                                 tok,
                                                                 "--placement",
                                                                 "disaggregated",
                                                                 "--chunk-tokens",
                                                                 "8",
                                                                 "--requests-from",
                                                                 "-",
                                                                 "--heartbeat-timeout-ms",
                                                                 "2000",
                                                                 "--join-timeout-ms",
                                                                 "30000"});
    auto first = controller->read_line();
    REQUIRE(first);
    INFO(*first);
    auto w = words(*first);
    REQUIRE(w.size() == 2);
    REQUIRE(w[0] == "listening");
    address = w[1];
    for (const auto& role : roles) nodes.push_back(start_node(role, node_args));
    while (true) {
      auto line = controller->read_line();
      REQUIRE(line);
      log.push_back(*line);
      auto lw = words(*line);
      // "event node <n> joined pid <p> ..."
      if (lw.size() >= 6 && lw[0] == "event" && lw[1] == "node" && lw[3] == "joined") {
        node_pids[std::stoi(lw[2])] = pid_t(std::stoi(lw[5]));
        // "... profile <p> roles <r> kv <address>"
        if (lw.size() >= 10) node_roles[std::stoi(lw[2])] = lw[9];
      }
      if (lw.size() >= 1 && lw[0] == "ready") break;
    }
    REQUIRE(node_pids.size() == roles.size());
  }

  /// A `duet node` process joining this controller with `role`.
  std::unique_ptr<child_process> start_node(const std::string& role,
                                            const std::vector<std::string>& node_args = {}) {
    std::vector<std::string> args{duet_binary(), "node",
                                  "--join",      address,
                                  "--role",      role,
                                  "--profile",   "cpu",
                                  "--transport", "zmq+tcp",
                                  "--model",     duet::test::model_file("stories260K.bin"),
                                  "--tokenizer", duet::test::model_file("tok512.bin")};
    args.insert(args.end(), node_args.begin(), node_args.end());
    return std::make_unique<child_process>(args);
  }

  /// Reads controller lines (into the log) until one starts with `prefix`; false on timeout.
  bool wait_for_event(const std::string& prefix) {
    while (auto line = controller->read_line()) {
      log.push_back(*line);
      if (line->rfind(prefix, 0) == 0) return true;
    }
    return false;
  }

  child_process& node_with_pid(pid_t pid) {
    for (auto& n : nodes)
      if (n->pid() == pid) return *n;
    FAIL("no node process with pid " << pid);
    return *nodes.front();
  }

  /// Closes the controller's input: it exits once its requests are done, and its nodes follow.
  void shut_down() {
    controller->close_stdin();
    while (controller->read_line()) {
    }
    CHECK(controller->wait_exit() == 0);
    for (auto& n : nodes) {
      auto pid = n->pid();
      if (pid < 0) continue;
      int status = n->wait_exit();
      INFO("node pid " << pid << " exit status " << status);
      // A node killed by the test reports the signal; a live one exits 0 when the controller
      // goes away.
      CHECK((status == 0 || status == 128 + SIGKILL));
    }
  }
};

struct run_result {
  std::vector<int> tokens;
  std::vector<int> positions;
  std::string done;
  int decode_node = -1;
  std::vector<int> prefill_nodes; ///< of the latest placement
  std::vector<std::string> events;
};

/// A request that survived its faults: no error text, exactly the fault-free tokens, positions
/// contiguous after the prompt.
void check_fault_free(const run_result& r, const std::vector<int>& prompt,
                      const std::vector<int>& expected) {
  INFO(r.done);
  CHECK(r.done.find(" error=") == r.done.size() - 7); // no error text
  CHECK(r.tokens == expected);
  for (std::size_t i = 0; i < r.positions.size(); ++i)
    CHECK(r.positions[i] == int(prompt.size() + i));
}

/// Submits one request and reads until its done line. `on_token(count)` may act mid-stream,
/// `on_event(result)` after each controller event line (the latest is result.events.back()).
template <class OnToken, class OnEvent>
run_result run_request(deployment& d, const std::string& id, const std::vector<int>& prompt,
                       int max_tokens, OnToken on_token, OnEvent on_event) {
  std::string line = id + " " + std::to_string(max_tokens) + " disaggregated ";
  for (std::size_t i = 0; i < prompt.size(); ++i)
    line += (i ? "," : "") + std::to_string(prompt[i]);
  d.controller->write_line(line);
  run_result r;
  while (true) {
    auto got = d.controller->read_line();
    INFO("controller so far: " << joined(r.events));
    REQUIRE(got);
    auto w = words(*got);
    if (w.empty()) continue;
    if (w[0] == "token" && w.size() == 4 && w[1] == id) {
      r.positions.push_back(std::stoi(w[2]));
      r.tokens.push_back(std::stoi(w[3]));
      on_token(r, int(r.tokens.size()));
    } else if (w[0] == "done" && w.size() >= 2 && w[1] == id) {
      r.done = *got;
      return r;
    } else {
      r.events.push_back(*got);
      // "event placed <request> decode_node <n> <mode> [prefill_nodes <a>,<b>...]"
      if (w.size() >= 5 && w[0] == "event" && w[1] == "placed") {
        r.decode_node = std::stoi(w[4]);
        r.prefill_nodes.clear();
        if (w.size() >= 8 && w[6] == "prefill_nodes") {
          std::istringstream list{w[7]};
          for (std::string n; std::getline(list, n, ',');) r.prefill_nodes.push_back(std::stoi(n));
        }
      }
      on_event(r);
    }
  }
}

template <class OnToken>
run_result run_request(deployment& d, const std::string& id, const std::vector<int>& prompt,
                       int max_tokens, OnToken on_token) {
  return run_request(d, id, prompt, max_tokens, on_token, [](run_result&) {});
}

std::vector<int> story_prompt() {
  static auto model = duet::engine::open_model(duet::test::model_file("stories260K.bin"),
                                               duet::test::model_file("tok512.bin"));
  return model.tok.encode("Once upon a time, there was a little girl named Lily who", true);
}

} // namespace

TEST_CASE("a request disaggregated across controller and node processes gives the "
          "single-engine greedy tokens") {
  auto prompt = story_prompt();
  auto expected = duet::test::reference_tokens(prompt, 24);
  deployment d{0};
  auto r = run_request(d, "r1", prompt, 24, [](run_result&, int) {});
  INFO(r.done);
  CHECK(r.done.rfind("done r1 ", 0) == 0);
  check_fault_free(r, prompt, expected);
  CHECK(d.node_roles[r.decode_node] == "decode"); // placed on a decode node process
  d.shut_down();
}

TEST_CASE("a decode node process SIGKILLed mid-generation is detected and the request ends "
          "with the fault-free tokens on the other decode node") {
  auto prompt = story_prompt();
  const int max_tokens = 40;
  auto expected = duet::test::reference_tokens(prompt, max_tokens);
  REQUIRE(expected.size() > 8); // room to kill mid-generation
  // Each decode step sleeps 20 ms on the decode nodes, so the kill lands mid-generation.
  deployment d{20};
  pid_t killed = -1;
  auto r = run_request(d, "r2", prompt, max_tokens, [&](run_result& res, int count) {
    if (count != 4 || killed > 0) return;
    REQUIRE(res.decode_node >= 0);
    killed = d.node_pids.at(res.decode_node);
    d.node_with_pid(killed).kill(SIGKILL);
  });
  INFO(r.done);
  REQUIRE(killed > 0);
  CHECK(r.done.rfind("done r2 ", 0) == 0);
  check_fault_free(r, prompt, expected);
  // The request moved to the other decode node.
  int placements = 0;
  for (const auto& e : r.events)
    if (e.rfind("event placed ", 0) == 0) ++placements;
  CHECK(placements >= 2);
  CHECK(d.node_with_pid(killed).wait_exit() == 128 + SIGKILL);
  // The controller declared the node dead (CAF reported its agent down or heartbeats stopped).
  bool node_down = false;
  for (const auto& e : r.events)
    if (e.find(" down: ") != std::string::npos) node_down = true;
  while (!node_down) {
    auto line = d.controller->read_line(std::chrono::milliseconds(5000));
    if (!line) break;
    if (line->find(" down: ") != std::string::npos) node_down = true;
  }
  CHECK(node_down);
  d.shut_down();
}

TEST_CASE("a prefill node process SIGKILLed mid-prefill is detected, its shard re-placed, and "
          "the request ends with the fault-free tokens") {
  auto prompt = story_prompt();
  const int max_tokens = 16;
  auto expected = duet::test::reference_tokens(prompt, max_tokens);
  // Two prefill nodes; each prefill chunk (8 tokens, so the prompt takes several) sleeps
  // 300 ms first, so the kill right after placement lands mid-prefill.
  REQUIRE(prompt.size() > 16);
  deployment d{{"prefill", "prefill", "decode"}, {"--slow-prefill-ms", "300"}};
  pid_t killed = -1;
  auto r = run_request(
      d, "r3", prompt, max_tokens, [](run_result&, int) {},
      [&](run_result& res) {
        if (killed > 0 || res.prefill_nodes.empty()) return;
        killed = d.node_pids.at(res.prefill_nodes.front());
        d.node_with_pid(killed).kill(SIGKILL);
      });
  INFO(r.done);
  INFO("controller events: " << joined(r.events));
  REQUIRE(killed > 0);
  CHECK(r.done.rfind("done r3 ", 0) == 0);
  check_fault_free(r, prompt, expected);
  // The kill hit this request before its first token: it was re-run (restarts >= 1).
  CHECK(r.done.find(" restarts=0 ") == std::string::npos);
  CHECK(d.node_with_pid(killed).wait_exit() == 128 + SIGKILL);
  // The controller declared the node dead and re-placed its shard on the live prefill node.
  bool node_down = false, re_placed = false;
  auto scan = [&](const std::string& e) {
    if (e.find(" down: ") != std::string::npos) node_down = true;
    if (e.find("re-placing ") != std::string::npos) re_placed = true;
  };
  for (const auto& e : r.events) scan(e);
  while (!(node_down && re_placed)) {
    auto line = d.controller->read_line(std::chrono::milliseconds(5000));
    if (!line) break;
    scan(*line);
  }
  CHECK(node_down);
  CHECK(re_placed);
  d.shut_down();
}

TEST_CASE("a decode node process that joins after one died takes its place and serves, and a "
          "join with no dead node to replace, or with another K and V type, is refused with the "
          "reason") {
  auto prompt = story_prompt();
  const int max_tokens = 12;
  auto expected = duet::test::reference_tokens(prompt, max_tokens);
  deployment d{{"prefill", "decode"}, {}};
  int decode_id = -1;
  for (const auto& [id, role] : d.node_roles)
    if (role == "decode") decode_id = id;
  REQUIRE(decode_id >= 0);
  auto log = [&] { return joined(d.log); };

  // Every node alive: a further node has no place to take. The controller says why (and the
  // node, on stderr, before it exits 1).
  {
    auto extra = d.start_node("decode");
    INFO("controller: " << log());
    CHECK(d.wait_for_event("event join refused pid " + std::to_string(extra->pid()) +
                           ": no dead node with profile cpu and roles decode to replace"));
    CHECK(extra->wait_exit() == 1);
  }

  // The decode node dies between requests; the controller declares it dead.
  pid_t killed = d.node_pids.at(decode_id);
  d.node_with_pid(killed).kill(SIGKILL);
  CHECK(d.node_with_pid(killed).wait_exit() == 128 + SIGKILL);
  INFO("controller: " << log());
  REQUIRE(d.wait_for_event("event node " + std::to_string(decode_id) + " down: "));

  // A replacement that stores K and V as another type than the cluster (stories260K: f32) is
  // refused with the reason: the prefill node's segments would not import into its lane.
  {
    auto other = d.start_node("decode", {"--kv-dtype", "f16"});
    INFO("controller: " << log());
    CHECK(d.wait_for_event("event join refused pid " + std::to_string(other->pid()) +
                           ": it stores K and V as f16, the cluster as f32"));
    CHECK(other->wait_exit() == 1);
  }

  // A new decode node process joins: it takes the dead node's id and gets its decode lane.
  d.nodes.push_back(d.start_node("decode"));
  const pid_t replacement = d.nodes.back()->pid();
  REQUIRE(d.wait_for_event("event node " + std::to_string(decode_id) + " rejoined pid " +
                           std::to_string(replacement) + " "));
  REQUIRE(d.wait_for_event("event spawned " +
                           std::string(duet::actors::decode_lane_name(decode_id)) + " on node " +
                           std::to_string(decode_id)));

  // The next request decodes on the new process with the single-engine tokens.
  auto r = run_request(d, "r4", prompt, max_tokens, [](run_result&, int) {});
  INFO(r.done);
  check_fault_free(r, prompt, expected);
  CHECK(r.decode_node == decode_id);
  d.shut_down();
}

TEST_CASE("crash-node on the controller's input kills the prefill shard and the decode lane of a "
          "node process at once, and the request ends with the fault-free tokens") {
  auto prompt = story_prompt();
  const int max_tokens = 30;
  auto expected = duet::test::reference_tokens(prompt, max_tokens);
  // One node with both roles: its prefill shard sends KV to its own decode lane. Each decode
  // step sleeps 20 ms, so the crash lands mid-generation.
  deployment d{{"both"}, {"--slow-decode-ms", "20"}};
  REQUIRE(d.node_roles.at(0) == "prefill+decode");
  bool crashed = false;
  auto r = run_request(
      d, "r5", prompt, max_tokens,
      [&](run_result&, int count) {
        if (count == 4) d.controller->write_line("crash-node 0");
      },
      [&](run_result& res) {
        if (res.events.back() == "event crashed node 0: decode/0,prefill/0/0") crashed = true;
      });
  INFO(r.done);
  INFO("controller events: " << joined(r.events));
  CHECK(crashed);
  check_fault_free(r, prompt, expected);
  CHECK(r.done.find(" restarts=0 ") == std::string::npos);
  // Unknown targets are reported, not fatal.
  d.controller->write_line("crash-node 7");
  CHECK(d.wait_for_event("event crash-node 7: no live actor on that node"));
  d.controller->write_line("kill decode/9");
  CHECK(d.wait_for_event("event kill decode/9: no live actor of that name"));
  d.shut_down();
}
