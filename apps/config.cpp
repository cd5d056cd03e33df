#include "apps/config.hpp"

#include "engine/error.hpp"

#include <fmt/core.h>
#include <fmt/ranges.h>
#include <toml++/toml.h>

#include <algorithm>
#include <charconv>
#include <filesystem>
#include <sstream>
#include <stdexcept>

namespace duet::apps {

namespace {

std::int64_t parse_int(const std::string& text, std::int64_t lo, std::int64_t hi) {
  std::int64_t v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc{} || end != text.data() + text.size())
    throw std::invalid_argument(fmt::format("expected an integer, got '{}'", text));
  if (v < lo || v > hi)
    throw std::invalid_argument(fmt::format("expected {}..{}, got {}", lo, hi, v));
  return v;
}

const std::string& single(const std::vector<std::string>& values) {
  if (values.empty()) throw std::invalid_argument("a value is required");
  return values.back(); // the last one given wins, as with most command lines
}

std::string placement_name(actors::placement_mode m) {
  switch (m) {
  case actors::placement_mode::integrated:
    return "integrated";
  case actors::placement_mode::disaggregated:
    return "disaggregated";
  case actors::placement_mode::automatic:
    break;
  }
  return "auto";
}

const std::vector<std::string> transports = {"inproc",     "zmq+tcp",    "zmq+ipc",
                                             "fabric+shm", "fabric+tcp", "actor"};

} // namespace

std::pair<std::string, int> parse_host_port(const std::string& text) {
  auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0)
    throw std::invalid_argument(fmt::format("expected HOST:PORT, got '{}'", text));
  try {
    return {text.substr(0, colon), static_cast<int>(parse_int(text.substr(colon + 1), 0, 65535))};
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(fmt::format("bad port in '{}': {}", text, e.what()));
  }
}

actors::placement_mode parse_placement(const std::string& text) {
  if (text == "auto") return actors::placement_mode::automatic;
  if (text == "integrated") return actors::placement_mode::integrated;
  if (text == "disaggregated") return actors::placement_mode::disaggregated;
  throw std::invalid_argument(
      fmt::format("expected auto, integrated or disaggregated, got '{}'", text));
}

const std::vector<option_spec>& serve_options() {
  using V = const std::vector<std::string>&;
  static const std::vector<option_spec> options = {
      {"--model", "DUET_MODEL", "model", "PATH",
       "Model file to serve: a llama2.c checkpoint (.bin) or a GGUF file", false,
       [](const serve_config& c) { return c.model; },
       [](serve_config& c, V v) { c.model = single(v); }},
      {"--tokenizer", "DUET_TOKENIZER", "tokenizer", "PATH",
       "llama2.c tokenizer file of the model (ignored for GGUF, which carries its own)", false,
       [](const serve_config& c) { return c.tokenizer; },
       [](serve_config& c, V v) { c.tokenizer = single(v); }},
      {"--host", "DUET_HOST", "host", "ADDR", "Address to listen on (0.0.0.0 for every interface)",
       false, [](const serve_config& c) { return c.host; },
       [](serve_config& c, V v) { c.host = single(v); }},
      {"--port", "DUET_PORT", "port", "INT",
       "TCP port to listen on; 0 picks a free one (printed as `listening on http://HOST:PORT`)",
       false, [](const serve_config& c) { return std::to_string(c.port); },
       [](serve_config& c, V v) { c.port = static_cast<int>(parse_int(single(v), 0, 65535)); }},
      {"--local", "DUET_LOCAL", "local", "SHAPE",
       "Shape of the embedded cluster: prefill=N,decode=M nodes in this process (and split=K "
       "prefill shards per pipeline); refused with --nodes-listen",
       false, [](const serve_config& c) { return c.local; },
       [](serve_config& c, V v) { c.local = single(v); }},
      {"--transport", "DUET_TRANSPORT", "transport", "NAME",
       "How KV moves from prefill to decode nodes of the embedded cluster: inproc, zmq+tcp, "
       "zmq+ipc, fabric+shm, fabric+tcp or actor; refused with --nodes-listen (each `duet node "
       "--transport` chooses)",
       false, [](const serve_config& c) { return c.transport; },
       [](serve_config& c, V v) {
         if (std::find(transports.begin(), transports.end(), single(v)) == transports.end())
           throw std::invalid_argument(
               fmt::format("expected one of {}, got '{}'", fmt::join(transports, ", "), single(v)));
         c.transport = single(v);
       }},
      {"--nodes-listen", "DUET_NODES_LISTEN", "nodes_listen", "HOST:PORT",
       "Serve a multi-process cluster: listen here for `duet node --join HOST:PORT` processes "
       "(port 0 picks a free one, printed as `nodes listening on HOST:PORT`) instead of "
       "embedding one; none = the embedded cluster of --local",
       false, [](const serve_config& c) { return c.nodes_listen; },
       [](serve_config& c, V v) {
         if (!single(v).empty()) (void)parse_host_port(single(v));
         c.nodes_listen = single(v);
       }},
      {"--nodes", "DUET_NODES", "nodes", "INT",
       "With --nodes-listen: nodes that must join before serving (later joins only replace dead "
       "nodes)",
       false, [](const serve_config& c) { return std::to_string(c.nodes); },
       [](serve_config& c, V v) { c.nodes = static_cast<int>(parse_int(single(v), 1, 1024)); }},
      {"--nodes-join-timeout-ms", "DUET_NODES_JOIN_TIMEOUT_MS", "nodes_join_timeout_ms", "MS",
       "With --nodes-listen: how long to wait for the nodes to join and start their shards and "
       "lanes; then duet serve exits with an error",
       false, [](const serve_config& c) { return std::to_string(c.nodes_join_timeout_ms); },
       [](serve_config& c, V v) {
         c.nodes_join_timeout_ms = static_cast<int>(parse_int(single(v), 100, 3600 * 1000));
       }},
      {"--nodes-split", "DUET_NODES_SPLIT", "nodes_split", "INT",
       "With --nodes-listen: prefill shards per pipeline over the prefill nodes (0: as their "
       "profiles fit)",
       false, [](const serve_config& c) { return std::to_string(c.nodes_split); },
       [](serve_config& c, V v) { c.nodes_split = static_cast<int>(parse_int(single(v), 0, 64)); }},
      {"--api-key", "DUET_API_KEYS", "api_keys", "KEY",
       "API key clients must send as `Authorization: Bearer KEY`; repeat for several "
       "(environment: comma-separated); none = no authentication",
       true, [](const serve_config& c) { return c.api_keys.empty() ? "" : "(set)"; },
       [](serve_config& c, V v) {
         c.api_keys.clear();
         for (const auto& k : v)
           if (!k.empty()) c.api_keys.push_back(k);
       }},
      {"--model-name", "DUET_MODEL_NAME", "model_name", "NAME",
       "Model name clients send in `model` and see in /v1/models (default: the model file's "
       "name without extension)",
       false,
       [](const serve_config& c) { return c.model_name.empty() ? "(file stem)" : c.model_name; },
       [](serve_config& c, V v) { c.model_name = single(v); }},
      {"--max-concurrent", "DUET_MAX_CONCURRENT", "max_concurrent", "INT",
       "Completion requests served at once; more are refused with 429 and Retry-After", false,
       [](const serve_config& c) { return std::to_string(c.max_concurrent); },
       [](serve_config& c, V v) {
         c.max_concurrent = static_cast<int>(parse_int(single(v), 1, 4096));
       }},
      {"--max-body-bytes", "DUET_MAX_BODY_BYTES", "max_body_bytes", "BYTES",
       "Largest request body accepted; larger bodies are refused with 413", false,
       [](const serve_config& c) { return std::to_string(c.max_body_bytes); },
       [](serve_config& c, V v) {
         c.max_body_bytes = static_cast<std::size_t>(parse_int(single(v), 1024, 1LL << 30));
       }},
      {"--max-tokens", "DUET_MAX_TOKENS", "max_tokens", "INT",
       "Largest max_tokens one request may ask for (more is refused with 400); also the "
       "default of chat requests that give none",
       false, [](const serve_config& c) { return std::to_string(c.max_tokens); },
       [](serve_config& c, V v) {
         c.max_tokens = static_cast<int>(parse_int(single(v), 1, 1 << 20));
       }},
      {"--placement", "DUET_PLACEMENT", "placement", "MODE",
       "Where requests run: auto (the policy decides per request), integrated (prefill and "
       "decode on one node) or disaggregated (KV moves between nodes)",
       false, [](const serve_config& c) { return placement_name(c.placement); },
       [](serve_config& c, V v) { c.placement = parse_placement(single(v)); }},
      {"--request-timeout-ms", "DUET_REQUEST_TIMEOUT_MS", "request_timeout_ms", "MS",
       "Deadline of one request from admission; past it the request fails with 429", false,
       [](const serve_config& c) { return std::to_string(c.request_timeout_ms); },
       [](serve_config& c, V v) {
         c.request_timeout_ms = parse_int(single(v), 100, 24LL * 3600 * 1000);
       }},
      {"--engine-threads", "DUET_ENGINE_THREADS", "engine_threads", "INT",
       "Compute threads of each prefill shard and decode lane of the embedded cluster; refused "
       "with --nodes-listen (each `duet node --threads` chooses)",
       false, [](const serve_config& c) { return std::to_string(c.engine_threads); },
       [](serve_config& c, V v) {
         c.engine_threads = static_cast<int>(parse_int(single(v), 1, 256));
       }},
      {"--kv-dtype", "DUET_KV_DTYPE", "kv_dtype", "TYPE",
       "K and V element type of the embedded cluster: auto (f32 for f32 weights, which "
       "reproduces llama2.c's run.c; f16 for f16 or q8_0 weights, half the KV memory), f32 or "
       "f16; refused with --nodes-listen (each `duet node --kv-dtype` chooses)",
       false,
       [](const serve_config& c) { return std::string(engine::kv_dtype_choice_name(c.kv_dtype)); },
       [](serve_config& c, V v) {
         try {
           c.kv_dtype = engine::parse_kv_dtype(single(v));
         } catch (const engine::engine_error& e) {
           throw std::invalid_argument(e.what());
         }
       }},
      {"--log-level", "DUET_LOG_LEVEL", "log_level", "LEVEL",
       "trace, debug, info, warn, error or off (logs go to stderr, one logfmt line per event)",
       false, [](const serve_config& c) { return c.log_level; },
       [](serve_config& c, V v) {
         static const std::vector<std::string> levels = {"trace", "debug", "info",
                                                         "warn",  "error", "off"};
         if (std::find(levels.begin(), levels.end(), single(v)) == levels.end())
           throw std::invalid_argument(
               fmt::format("expected {}, got '{}'", fmt::join(levels, ", "), single(v)));
         c.log_level = single(v);
       }},
  };
  return options;
}

serve_config default_serve_config(const std::string& models_dir) {
  serve_config c;
  c.model = (std::filesystem::path{models_dir} / "stories260K.bin").string();
  c.tokenizer = (std::filesystem::path{models_dir} / "tok512.bin").string();
  return c;
}

option_values read_config_file(const std::string& path) {
  toml::table table;
  try {
    table = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    throw std::runtime_error(
        fmt::format("config file {}:{}:{}: {}", path, where.line, where.column, e.description()));
  }
  option_values values;
  for (const auto& [key, node] : table) {
    // A named copy: clang 14 cannot capture structured bindings in lambdas (C++20 allows it).
    const std::string key_name{key.str()};
    const auto& options = serve_options();
    auto spec = std::find_if(options.begin(), options.end(),
                             [&](const option_spec& o) { return o.key == key_name; });
    const auto line = key.source().begin.line;
    if (spec == options.end()) {
      std::vector<std::string> known;
      for (const auto& o : options) known.push_back(o.key);
      throw std::runtime_error(fmt::format("config file {}:{}: unknown key '{}' (known keys: {})",
                                           path, line, key_name, fmt::join(known, ", ")));
    }
    auto scalar = [&](const toml::node& n) -> std::string {
      if (auto s = n.value<std::string>(); s && n.is_string()) return *s;
      if (n.is_integer()) return std::to_string(*n.value<std::int64_t>());
      throw std::runtime_error(fmt::format(
          "config file {}:{}: '{}' must be a {}", path, line, key_name,
          spec->value_name == "INT" || spec->value_name == "BYTES" || spec->value_name == "MS"
              ? "integer"
              : "string"));
    };
    std::vector<std::string> v;
    if (const auto* arr = node.as_array()) {
      if (!spec->repeatable)
        throw std::runtime_error(fmt::format("config file {}:{}: '{}' takes one value, not a list",
                                             path, line, key_name));
      for (const auto& item : *arr) v.push_back(scalar(item));
    } else {
      v.push_back(scalar(node));
    }
    values[spec->flag] = std::move(v);
  }
  return values;
}

option_values read_environment(const std::function<const char*(const char*)>& getenv) {
  option_values values;
  for (const auto& o : serve_options()) {
    const char* raw = getenv(o.env.c_str());
    if (raw == nullptr || *raw == '\0') continue;
    std::vector<std::string> v;
    if (o.repeatable) {
      std::stringstream in{raw};
      for (std::string item; std::getline(in, item, ',');) v.push_back(item);
    } else {
      v.emplace_back(raw);
    }
    values[o.flag] = std::move(v);
  }
  return values;
}

serve_config resolve_serve_config(const std::string& models_dir, const option_values& flags,
                                  std::string config_file,
                                  const std::function<const char*(const char*)>& getenv) {
  serve_config c = default_serve_config(models_dir);
  if (config_file.empty())
    if (const char* env = getenv("DUET_CONFIG"); env != nullptr) config_file = env;
  c.config_file = config_file;
  auto apply = [&](const option_values& values, const std::string& source) {
    for (const auto& o : serve_options()) {
      auto it = values.find(o.flag);
      if (it == values.end()) continue;
      c.given.insert(o.flag);
      try {
        o.set(c, it->second);
      } catch (const std::invalid_argument& e) {
        std::string from = source == "flag"  ? o.flag
                           : source == "env" ? "environment variable " + o.env
                                             : "'" + o.key + "' in " + config_file;
        throw std::runtime_error(fmt::format("{}: {}", from, e.what()));
      }
    }
  };
  if (!config_file.empty()) apply(read_config_file(config_file), "file");
  apply(read_environment(getenv), "env");
  apply(flags, "flag");
  // The two cluster shapes take different options: refuse a mix rather than ignore a setting
  // the user meant (it may have come from the environment or the file: the message says so).
  if (!c.nodes_listen.empty()) {
    for (const auto& [flag, instead] : std::vector<std::pair<std::string, std::string>>{
             {"--local", "the nodes that join are the cluster"},
             {"--transport", "each `duet node --transport` chooses how its KV moves"},
             {"--engine-threads", "each `duet node --threads` chooses its compute threads"},
             {"--kv-dtype", "each `duet node --kv-dtype` chooses its K and V type"}})
      if (c.given.count(flag) != 0)
        throw std::runtime_error(fmt::format(
            "{} is for the embedded cluster and conflicts with --nodes-listen ({}); drop one "
            "(it may come from the environment or the --config file)",
            flag, instead));
  } else {
    for (const std::string flag : {"--nodes", "--nodes-join-timeout-ms", "--nodes-split"})
      if (c.given.count(flag) != 0)
        throw std::runtime_error(fmt::format(
            "{} only applies with --nodes-listen (a multi-process cluster); drop it for the "
            "embedded cluster (it may come from the environment or the --config file)",
            flag));
  }
  return c;
}

std::string config_markdown_table(const std::string& models_dir_shown) {
  serve_config d = default_serve_config(models_dir_shown);
  std::string out = "| flag | environment | file key | default | meaning |\n"
                    "| --- | --- | --- | --- | --- |\n"
                    "| `--config PATH` | `DUET_CONFIG` | — | (none) | TOML file of the keys "
                    "below (precedence: flags > environment > file > defaults) |\n";
  for (const auto& o : serve_options()) {
    std::string def = o.show(d);
    out += fmt::format("| `{} {}`{} | `{}` | `{}` | {} | {} |\n", o.flag, o.value_name,
                       o.repeatable ? " (repeatable)" : "", o.env, o.key,
                       def.empty() ? "(none)" : "`" + def + "`", o.help);
  }
  return out;
}

} // namespace duet::apps
