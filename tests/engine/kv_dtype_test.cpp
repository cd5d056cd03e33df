// --kv-dtype: "auto" (every command's default) keeps f32 K and V for f32 weights, so that greedy
// output stays run.c's, and takes f16 for f16 or q8_0 weights; "f32" and "f16" are taken as
// said; anything else is refused with the accepted values.

#include "engine/error.hpp"
#include "engine/kv_dtype.hpp"
#include "engine/model_file.hpp"
#include "engine/synth.hpp"
#include "gguf_test_support.hpp"
#include "tests/support/models.hpp"

#include <catch2/catch.hpp>

using namespace duet::engine;

TEST_CASE("KV dtype names parse to their choice and back") {
  for (auto c : {kv_dtype_choice::automatic, kv_dtype_choice::f32, kv_dtype_choice::f16})
    CHECK(parse_kv_dtype(kv_dtype_choice_name(c)) == c);
  CHECK(kv_dtype_choice_name(kv_dtype_choice::automatic) == "auto");
  for (const char* bad : {"", "F32", "bf16", "q8_0", "auto "}) {
    INFO("'" << bad << "'");
    try {
      (void)parse_kv_dtype(bad);
      FAIL("accepted");
    } catch (const engine_error& e) {
      CHECK(e.code() == engine_errc::invalid_argument);
      CHECK_THAT(e.what(), Catch::Contains("expected auto, f32 or f16"));
    }
  }
}

TEST_CASE("auto KV dtype follows the weights: f32 for f32 matrices, f16 for f16 or q8_0 ones") {
  duet::test::temp_dir dir;
  const struct {
    dtype weights, automatic;
  } cases[] = {{dtype::f32, dtype::f32}, {dtype::f16, dtype::f16}, {dtype::q8_0, dtype::f16}};
  for (const auto& k : cases) {
    INFO("weights " << dtype_name(k.weights));
    const std::string path = dir.file(std::string{dtype_name(k.weights)} + ".gguf");
    write_synth_model(path, *find_synth_shape("tiny"), k.weights, synth_options{1, 0.02f});
    const auto m = open_model(path);
    CHECK(resolve_kv_dtype(kv_dtype_choice::automatic, *m.weights) == k.automatic);
    // An explicit choice wins over the weights.
    CHECK(resolve_kv_dtype(kv_dtype_choice::f32, *m.weights) == dtype::f32);
    CHECK(resolve_kv_dtype(kv_dtype_choice::f16, *m.weights) == dtype::f16);
  }
  // The bundled stories260K (llama2.c, f32): f32, the K and V run.c keeps.
  const auto stories =
      open_model(duet::test::model_file("stories260K.bin"), duet::test::model_file("tok512.bin"));
  CHECK(resolve_kv_dtype(kv_dtype_choice::automatic, *stories.weights) == dtype::f32);
  // One 16-bit matrix among f32 ones is enough (only the types are looked at).
  model_weights mixed = *stories.weights;
  mixed.layers.back().w2.type = dtype::q8_0;
  CHECK(resolve_kv_dtype(kv_dtype_choice::automatic, mixed) == dtype::f16);
  mixed = *stories.weights;
  mixed.classifier.type = dtype::f16;
  CHECK(resolve_kv_dtype(kv_dtype_choice::automatic, mixed) == dtype::f16);
}
