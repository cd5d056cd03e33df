#include "engine/kv_dtype.hpp"

#include "engine/error.hpp"
#include "engine/model_weights.hpp"

#include <string>

namespace duet::engine {

kv_dtype_choice parse_kv_dtype(std::string_view text) {
  if (text == "auto") return kv_dtype_choice::automatic;
  if (text == "f32") return kv_dtype_choice::f32;
  if (text == "f16") return kv_dtype_choice::f16;
  throw engine_error(engine_errc::invalid_argument,
                     "KV dtype '" + std::string(text) + "': expected auto, f32 or f16");
}

std::string_view kv_dtype_choice_name(kv_dtype_choice choice) {
  switch (choice) {
  case kv_dtype_choice::automatic:
    return "auto";
  case kv_dtype_choice::f32:
    return "f32";
  case kv_dtype_choice::f16:
    return "f16";
  }
  return "?";
}

dtype resolve_kv_dtype(kv_dtype_choice choice, const model_weights& w) {
  if (choice == kv_dtype_choice::f32) return dtype::f32;
  if (choice == kv_dtype_choice::f16) return dtype::f16;
  bool all_f32 = w.classifier.type == dtype::f32;
  for (const auto& l : w.layers)
    for (const tensor_view* m : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w1, &l.w2, &l.w3})
      all_f32 = all_f32 && m->type == dtype::f32;
  return all_f32 ? dtype::f32 : dtype::f16;
}

} // namespace duet::engine
