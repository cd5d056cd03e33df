#pragma once

// Where tests find the bundled models: $DUET_MODELS_DIR, else ../shared/models next to the
// source tree (fixed at configure time). A missing file fails the test and says where it looked.

#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <string>

namespace duet::test {

inline std::filesystem::path models_dir() {
  if (const char* env = std::getenv("DUET_MODELS_DIR"); env != nullptr && *env != '\0') return env;
  return DUET_DEFAULT_MODELS_DIR;
}

/// Full path of a model file; fails the current test if it is not there.
inline std::string model_file(const std::string& name) {
  auto path = models_dir() / name;
  if (!std::filesystem::exists(path))
    FAIL("test model " << name << " not found at " << path.string()
                       << " (set DUET_MODELS_DIR to the folder that holds it)");
  return path.string();
}

} // namespace duet::test
