#pragma once

// Configuration of `duet serve`: one table of options (serve_options()) drives the command-line
// flags, the TOML file keys, the DUET_* environment variables, `--help` and the table in
// docs/configuration.md (`duet serve --print-config-table` prints it; a test keeps them equal).
// Precedence, highest first: flags > environment > file (--config) > defaults.

#include "actors/completion_service.hpp"
#include "engine/kv_dtype.hpp"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace duet::apps {

struct serve_config {
  std::string config_file; ///< the TOML file read ("" = none)
  std::string model;       ///< model file (.bin or .gguf)
  std::string tokenizer;   ///< llama2.c tokenizer ("" for GGUF)
  std::string host = "127.0.0.1";
  int port = 8000;
  std::string local = "prefill=1,decode=1"; ///< embedded cluster shape
  std::string transport = "inproc";
  std::vector<std::string> api_keys;
  std::string model_name; ///< "" = the model file's stem
  int max_concurrent = 128;
  std::size_t max_body_bytes = 1 << 20;
  int max_tokens = 4096;
  actors::placement_mode placement = actors::placement_mode::automatic;
  std::int64_t request_timeout_ms = 120000;
  int engine_threads = 1;
  engine::kv_dtype_choice kv_dtype = engine::kv_dtype_choice::automatic;
  std::string log_level = "info";
  /// "HOST:PORT" where `duet node` processes join (CAF middleman; port 0 = ephemeral). "" (the
  /// default): the cluster is embedded in this process (--local). Set: the cluster is the
  /// nodes that join, as with `duet controller`.
  std::string nodes_listen;
  int nodes = 2;                     ///< nodes to wait for (with nodes_listen)
  int nodes_join_timeout_ms = 30000; ///< how long to wait for them, then fail
  int nodes_split = 1;               ///< prefill shards per pipeline over joined nodes
  std::set<std::string> given;       ///< flags set by any source (flag, environment, file)
};

/// One configurable option, in every form it can be given.
struct option_spec {
  std::string flag;        ///< "--port"
  std::string env;         ///< "DUET_PORT"
  std::string key;         ///< TOML key, "port"
  std::string value_name;  ///< for --help and the docs table, e.g. "INT"
  std::string help;        ///< one sentence
  bool repeatable = false; ///< may be given several times (a list)
  std::function<std::string(const serve_config&)> show; ///< current value, for docs
  std::function<void(serve_config&, const std::vector<std::string>&)> set; ///< throws on bad value
};

/// Every option of `duet serve` except --config itself (which names the file).
const std::vector<option_spec>& serve_options();

/// The defaults, with the bundled model under `models_dir`.
serve_config default_serve_config(const std::string& models_dir);

/// Values given for one source, by flag ("--port" -> {"8080"}).
using option_values = std::map<std::string, std::vector<std::string>>;

/// Reads a TOML file into option values; throws std::runtime_error naming the file, line and
/// key for syntax errors, unknown keys and values of the wrong type.
option_values read_config_file(const std::string& path);

/// DUET_* variables that are set, through `getenv` (injectable for tests). Lists
/// (DUET_API_KEYS) are comma-separated.
option_values read_environment(const std::function<const char*(const char*)>& getenv);

/// Applies defaults < file < environment < flags. `config_file` is the --config flag's value
/// (or "" to fall back to $DUET_CONFIG). Throws std::runtime_error naming the option and the
/// source of a bad value.
serve_config resolve_serve_config(const std::string& models_dir, const option_values& flags,
                                  std::string config_file,
                                  const std::function<const char*(const char*)>& getenv);

/// The Markdown table of docs/configuration.md.
std::string config_markdown_table(const std::string& models_dir_shown);

/// "HOST:PORT" into its parts (port 0..65535; HOST may be a name or an address); throws
/// std::invalid_argument.
std::pair<std::string, int> parse_host_port(const std::string& text);

/// "auto" | "integrated" | "disaggregated".
actors::placement_mode parse_placement(const std::string& text);

} // namespace duet::apps
