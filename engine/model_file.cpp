#include "engine/model_file.hpp"

#include "engine/error.hpp"
#include "engine/gguf_reader.hpp"
#include "engine/llama2c.hpp"

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>

namespace duet::engine {

model_format detect_model_format(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw engine_error(engine_errc::io_error,
                       path + ": cannot open model file: " + std::strerror(errno));
  char magic[4] = {};
  in.read(magic, sizeof magic);
  // A file shorter than 4 bytes is not GGUF; the llama2.c loader then reports its truncation.
  if (in.gcount() == 4 && std::memcmp(magic, "GGUF", 4) == 0) return model_format::gguf;
  return model_format::llama2c;
}

namespace {

loaded_model open_gguf(const std::string& path) {
  gguf_model m = load_gguf_model(path);
  tokenizer tok(std::move(m.vocab.pieces), std::move(m.vocab.scores), m.vocab.bos_id,
                m.vocab.eos_id);
  loaded_model out{std::make_shared<const model_weights>(std::move(m.weights)), std::move(tok),
                   model_format::gguf, m.vocab.add_bos};
  return out;
}

loaded_model open_llama2c(const std::string& model_path, const std::string& tokenizer_path) {
  if (tokenizer_path.empty())
    throw engine_error(engine_errc::invalid_argument,
                       model_path + ": a llama2.c checkpoint needs its tokenizer file "
                                    "(--tokenizer tok.bin); only GGUF files carry their own");
  auto weights = std::make_shared<const model_weights>(load_llama2c_checkpoint(model_path));
  tokenizer tok = load_llama2c_tokenizer(tokenizer_path, weights->config.vocab_size);
  return loaded_model{std::move(weights), std::move(tok), model_format::llama2c, true};
}

} // namespace

loaded_model open_model(const std::string& model_path, const std::string& tokenizer_path) {
  if (detect_model_format(model_path) == model_format::gguf) return open_gguf(model_path);
  return open_llama2c(model_path, tokenizer_path);
}

} // namespace duet::engine
