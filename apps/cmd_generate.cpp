// `duet generate`: run a model on this CPU and stream its text (llama2.c run.c's generate loop
// on duet's engine), and `duet tokenize`: print the token ids of a text.
#include "apps/command.hpp"
#include "engine/forward.hpp"
#include "engine/kernels.hpp"
#include "engine/kv_cache.hpp"
#include "engine/kv_dtype.hpp"
#include "engine/model_file.hpp"
#include "engine/sampler.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>

namespace duet::apps {

namespace {

struct generate_options {
  std::string model;
  std::string tokenizer;
  std::string prompt;
  int steps = 256;
  float temperature = 1.0f;
  float top_p = 0.9f;
  int top_k = 0;
  std::uint64_t seed = 0;
  int threads = 1;
  std::string kv_dtype = "auto";
  std::vector<std::string> stop;
};

/// run.c's safe_printf: raw bytes that are control characters are not printed.
void print_piece(const std::string& piece) {
  if (piece.empty()) return;
  if (piece.size() == 1) {
    auto c = static_cast<unsigned char>(piece[0]);
    if (!(std::isprint(c) || std::isspace(c))) return;
  }
  std::fwrite(piece.data(), 1, piece.size(), stdout);
  std::fflush(stdout);
}

void run_generate(const generate_options& o) {
  using clock = std::chrono::steady_clock;
  auto model = engine::open_model(o.model, o.tokenizer);
  const auto& w = *model.weights;
  const auto& tok = model.tok;
  const auto& cfg = w.config;
  engine::runner run(w, engine::runner_options{o.threads, 64});
  const engine::dtype kv_type = engine::resolve_kv_dtype(engine::parse_kv_dtype(o.kv_dtype), w);
  auto kv_cfg = engine::kv_cache_config::for_model(cfg, 0, cfg.n_layers, 0, kv_type);
  kv_cfg.blocks_max = kv_cfg.blocks_for(1);
  engine::kv_cache kv(kv_cfg);

  auto prompt = tok.encode(o.prompt, model.add_bos);
  if (prompt.empty()) prompt.push_back(tok.bos_id());
  if (static_cast<int>(prompt.size()) >= cfg.seq_len)
    throw std::runtime_error("prompt has " + std::to_string(prompt.size()) +
                             " tokens, the model's context is " + std::to_string(cfg.seq_len));
  int room = cfg.seq_len - static_cast<int>(prompt.size());
  int max_new = o.steps <= 0 ? room : std::min(o.steps, room);

  engine::sampler_config sc;
  sc.temperature = o.temperature;
  sc.top_p = o.top_p;
  sc.top_k = o.top_k;
  sc.seed =
      o.seed != 0 ? o.seed : static_cast<std::uint64_t>(clock::now().time_since_epoch().count());
  engine::sampler sampler(sc, cfg.vocab_size);
  engine::stop_config stop;
  stop.stop_tokens = {tok.eos_id()};
  // llama2.c models delimit stories with BOS; run.c stops on it.
  if (model.format == engine::model_format::llama2c) stop.stop_tokens.push_back(tok.bos_id());
  stop.stop_strings = o.stop;
  stop.max_tokens = max_new;
  engine::stop_checker stopper(stop);

  // The prompt is echoed as run.c does (decoded token by token).
  for (std::size_t i = 1; i < prompt.size(); ++i) print_piece(tok.decode(prompt[i - 1], prompt[i]));
  if (prompt.size() == 1 && prompt[0] != tok.bos_id()) print_piece(tok.decode(-1, prompt[0]));

  const engine::seq_id seq = 1;
  kv.seq_add(seq);
  kv.seq_reserve(seq, static_cast<int>(prompt.size()));
  std::vector<float> logits(static_cast<std::size_t>(cfg.vocab_size));
  auto t0 = clock::now();
  run.prefill(kv, seq, 0, prompt, logits);
  auto t1 = clock::now();
  int pos = static_cast<int>(prompt.size()) - 1;
  int token = prompt.back();
  int generated = 0;
  for (;;) {
    int next = sampler.sample(logits);
    ++generated;
    auto reason = stopper.add(next, tok.decode(token, next));
    print_piece(stopper.take_ready());
    if (reason != engine::stop_reason::none) break;
    token = next;
    ++pos;
    kv.seq_reserve(seq, pos + 1); // one sequence, reserved to full length above: never fails
    engine::decode_item item{seq, token, pos};
    run.decode_batch(kv, std::span(&item, 1), logits);
  }
  auto t2 = clock::now();
  std::fputs("\n", stdout);
  std::fflush(stdout);
  auto secs = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
  // The first token comes from the prompt's logits: decode speed is over the other ones.
  const std::string decode_rate = generated > 1
                                      ? fmt::format("{:.1f} tok/s", (generated - 1) / secs(t1, t2))
                                      : std::string("no decode step");
  fmt::print(stderr,
             "prompt {} tokens in {:.3f} s ({:.1f} tok/s), generated {} tokens in {:.3f} s "
             "({}); {} threads, {} matmul, kv {}, seed {}\n",
             prompt.size(), secs(t0, t1), static_cast<double>(prompt.size()) / secs(t0, t1),
             generated, secs(t1, t2), decode_rate, run.threads(), engine::kernels::simd_level(),
             o.kv_dtype == "auto" ? fmt::format("{} (auto)", engine::dtype_name(kv_type))
                                  : o.kv_dtype,
             sc.seed);
}

void setup_generate(CLI::App& app) {
  auto o = std::make_shared<generate_options>();
  auto* cmd = app.add_subcommand(
      "generate", "Generate text with a model on this CPU, streaming it as it is produced");
  cmd->footer(
      "Models: GGUF (llama architecture; F32/F16/Q8_0; tokenizer inside the file) or a\n"
      "llama2.c checkpoint with its tokenizer file, e.g.\n"
      "  duet generate --model stories260K.bin --tokenizer tok512.bin --prompt 'Once upon'\n"
      "  duet generate --model stories260K.gguf --temperature 0 -n 100\n"
      "Timing (prefill and decode tok/s) is printed to stderr at the end.");
  cmd->add_option("--model,-m", o->model, "Model file (.gguf or llama2.c .bin)")->required();
  cmd->add_option("--tokenizer,-z", o->tokenizer,
                  "llama2.c tokenizer file (needed for .bin checkpoints; ignored for GGUF)");
  cmd->add_option("--prompt,-i", o->prompt, "Prompt text (empty: start from BOS)");
  cmd->add_option("-n,--steps", o->steps,
                  "Tokens to generate at most (0: until the context is full)")
      ->capture_default_str();
  cmd->add_option("--temperature,-t", o->temperature, "Sampling temperature; 0 = greedy")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-p,-p", o->top_p, "Nucleus sampling mass; 1 disables")
      ->capture_default_str()
      ->check(CLI::Range(0.0f, 1.0f));
  cmd->add_option("--top-k", o->top_k, "Keep the k most likely tokens; 0 disables")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed,-s", o->seed, "RNG seed (0: from the clock, printed at the end)")
      ->capture_default_str();
  cmd->add_option("--threads", o->threads, "Compute threads (the caller included)")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  add_kv_dtype_option(cmd, o->kv_dtype);
  cmd->add_option("--stop", o->stop, "Stop when this text appears (repeatable)");
  cmd->callback([o] { run_generate(*o); });
}

void setup_tokenize(CLI::App& app) {
  struct options {
    std::string model, tokenizer, text;
    bool no_bos = false;
    bool pieces = false;
  };
  auto o = std::make_shared<options>();
  auto* cmd = app.add_subcommand("tokenize", "Print the token ids of a text for a model");
  cmd->add_option("--model,-m", o->model, "Model file (.gguf or llama2.c .bin)")->required();
  cmd->add_option("--tokenizer,-z", o->tokenizer, "llama2.c tokenizer file (for .bin models)");
  cmd->add_option("--text", o->text, "Text to encode")->required();
  cmd->add_flag("--no-bos", o->no_bos, "Do not prepend BOS");
  cmd->add_flag("--pieces", o->pieces, "Print id and piece text, one per line");
  cmd->callback([o] {
    auto model = engine::open_model(o->model, o->tokenizer);
    auto ids = model.tok.encode(o->text, model.add_bos && !o->no_bos);
    if (o->pieces) {
      for (int id : ids) fmt::print("{}\t'{}'\n", id, model.tok.piece(id));
      return;
    }
    for (std::size_t i = 0; i < ids.size(); ++i) fmt::print("{}{}", i == 0 ? "" : " ", ids[i]);
    fmt::print("\n");
  });
}

const register_command reg_generate{&setup_generate};
const register_command reg_tokenize{&setup_tokenize};

} // namespace
} // namespace duet::apps
