// duet serve's configuration: flags > environment > TOML file > defaults, clear errors, and the
// documented table equal to the one the code prints.
#include "apps/config.hpp"

#include <catch2/catch.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <unistd.h>

using namespace duet::apps;

namespace {

struct fake_env {
  std::map<std::string, std::string> vars;
  std::function<const char*(const char*)> getter() const {
    return [this](const char* name) -> const char* {
      auto it = vars.find(name);
      return it == vars.end() ? nullptr : it->second.c_str();
    };
  }
};

struct temp_file {
  explicit temp_file(const std::string& text) {
    path =
        "/tmp/duet-config-test-" + std::to_string(getpid()) + "-" + std::to_string(++n) + ".toml";
    std::ofstream{path} << text;
  }
  ~temp_file() { std::remove(path.c_str()); }
  std::string path;
  static inline int n = 0;
};

} // namespace

TEST_CASE("Serve defaults are the bundled model on 127.0.0.1 port 8000 with 1 prefill and 1 decode "
          "node") {
  fake_env env;
  auto c = resolve_serve_config("/m", {}, "", env.getter());
  CHECK(c.model == "/m/stories260K.bin");
  CHECK(c.tokenizer == "/m/tok512.bin");
  CHECK(c.host == "127.0.0.1");
  CHECK(c.port == 8000);
  CHECK(c.local == "prefill=1,decode=1");
  CHECK(c.transport == "inproc");
  CHECK(c.api_keys.empty());
  CHECK(c.placement == duet::actors::placement_mode::automatic);
  CHECK(c.kv_dtype == duet::engine::kv_dtype_choice::automatic);
}

TEST_CASE("Flags override environment variables which override the TOML file") {
  temp_file file{"port = 7000\nhost = \"0.0.0.0\"\nmodel_name = \"from-file\"\n"
                 "api_keys = [\"f1\", \"f2\"]\nplacement = \"integrated\"\n"};
  fake_env env;
  env.vars = {
      {"DUET_PORT", "7001"}, {"DUET_MODEL_NAME", "from-env"}, {"DUET_API_KEYS", "e1,e2,e3"}};
  option_values flags = {{"--port", {"7002"}}};
  auto c = resolve_serve_config("/m", flags, file.path, env.getter());
  CHECK(c.port == 7002);             // flag
  CHECK(c.model_name == "from-env"); // env over file
  CHECK(c.api_keys == std::vector<std::string>{"e1", "e2", "e3"});
  CHECK(c.host == "0.0.0.0"); // file over default
  CHECK(c.placement == duet::actors::placement_mode::integrated);
  CHECK(c.config_file == file.path);
  SECTION("the KV dtype from each source") {
    temp_file f16{"kv_dtype = \"f16\"\n"};
    CHECK(resolve_serve_config("/m", {}, f16.path, env.getter()).kv_dtype ==
          duet::engine::kv_dtype_choice::f16);
    env.vars = {{"DUET_KV_DTYPE", "f32"}};
    CHECK(resolve_serve_config("/m", {}, f16.path, env.getter()).kv_dtype ==
          duet::engine::kv_dtype_choice::f32);
    CHECK(resolve_serve_config("/m", {{"--kv-dtype", {"auto"}}}, f16.path, env.getter()).kv_dtype ==
          duet::engine::kv_dtype_choice::automatic);
  }
  SECTION("DUET_CONFIG names the file when --config is absent") {
    env.vars = {{"DUET_CONFIG", file.path}};
    auto d = resolve_serve_config("/m", {}, "", env.getter());
    CHECK(d.port == 7000);
    CHECK(d.api_keys == std::vector<std::string>{"f1", "f2"});
  }
}

TEST_CASE("Bad configuration values are refused naming the option and where it came from") {
  fake_env env;
  auto fails_with = [&](const option_values& flags, const std::string& file,
                        const std::string& expected) {
    try {
      (void)resolve_serve_config("/m", flags, file, env.getter());
      FAIL("no error, expected: " << expected);
    } catch (const std::runtime_error& e) {
      INFO(e.what());
      CHECK(std::string{e.what()}.find(expected) != std::string::npos);
    }
  };
  fails_with({{"--port", {"http"}}}, "", "--port: expected an integer");
  fails_with({{"--port", {"70000"}}}, "", "--port: expected 0..65535");
  fails_with({{"--placement", {"both"}}}, "",
             "--placement: expected auto, integrated or disaggregated");
  fails_with({{"--transport", {"carrier-pigeon"}}}, "", "--transport: expected one of");
  fails_with({{"--kv-dtype", {"bf16"}}}, "",
             "--kv-dtype: KV dtype 'bf16': expected auto, f32 or f16");
  // Each node of a multi-process cluster chooses its own K and V type.
  fails_with({{"--nodes-listen", {"127.0.0.1:0"}}, {"--kv-dtype", {"f16"}}}, "",
             "--kv-dtype is for the embedded cluster and conflicts with --nodes-listen");
  env.vars = {{"DUET_MAX_CONCURRENT", "0"}};
  fails_with({}, "", "environment variable DUET_MAX_CONCURRENT");
  env.vars.clear();
  temp_file unknown{"prot = 1\n"};
  fails_with({}, unknown.path, "unknown key 'prot'");
  temp_file syntax{"port = = 1\n"};
  fails_with({}, syntax.path, syntax.path + ":1:");
  temp_file type{"port = \"x\"\n"};
  fails_with({}, type.path, "'port' in " + type.path);
}

TEST_CASE("docs/configuration.md holds the table duet serve prints") {
  // (a path, not string + literal: g++ 12 warns falsely on that with -O2 -Warray-bounds)
  std::ifstream in{std::filesystem::path{DUET_SOURCE_DIR} / "docs" / "configuration.md"};
  REQUIRE(in);
  std::stringstream s;
  s << in.rdbuf();
  const std::string doc = s.str();
  const std::string begin =
      "<!-- BEGIN duet serve options (generated by `duet serve --print-config-table`) -->\n";
  const std::string end = "<!-- END duet serve options -->";
  auto a = doc.find(begin);
  auto b = doc.find(end);
  REQUIRE(a != std::string::npos);
  REQUIRE(b != std::string::npos);
  CHECK(doc.substr(a + begin.size(), b - a - begin.size()) == config_markdown_table("<models>"));
}
