# Every dependency comes from Debian 12 packages (scripts/install-deps.sh installs them).
find_package(Threads REQUIRED)
find_package(PkgConfig REQUIRED)

# -- CAF 0.17.6: no CMake config and no pkg-config file, so imported targets by hand --------
find_path(CAF_INCLUDE_DIR caf/all.hpp REQUIRED)
find_library(CAF_CORE_LIBRARY caf_core REQUIRED)
find_library(CAF_IO_LIBRARY caf_io REQUIRED)
add_library(CAF::core SHARED IMPORTED)
set_target_properties(CAF::core PROPERTIES
  IMPORTED_LOCATION "${CAF_CORE_LIBRARY}"
  INTERFACE_INCLUDE_DIRECTORIES "${CAF_INCLUDE_DIR}"
  INTERFACE_LINK_LIBRARIES Threads::Threads)
add_library(CAF::io SHARED IMPORTED)
set_target_properties(CAF::io PROPERTIES
  IMPORTED_LOCATION "${CAF_IO_LIBRARY}"
  INTERFACE_LINK_LIBRARIES CAF::core)

# -- Cap'n Proto 0.9.2 ------------------------------------------------------------------------
find_package(CapnProto CONFIG REQUIRED)

# -- ZeroMQ 4.3 + cppzmq (targets: cppzmq, libzmq) --------------------------------------------
find_package(cppzmq CONFIG REQUIRED)

# -- libfabric 1.17 ---------------------------------------------------------------------------
pkg_check_modules(LIBFABRIC REQUIRED IMPORTED_TARGET libfabric>=1.17)

# -- xxHash (xxh3 checksums of KV segments) ---------------------------------------------------
pkg_check_modules(XXHASH REQUIRED IMPORTED_TARGET libxxhash)

# -- Command line, logging, JSON, HTTP, config, metrics ---------------------------------------
find_package(CLI11 CONFIG REQUIRED)
find_package(fmt CONFIG REQUIRED)
find_package(spdlog CONFIG REQUIRED)
find_package(nlohmann_json CONFIG REQUIRED)
find_package(tomlplusplus CONFIG REQUIRED)
find_package(prometheus-cpp CONFIG REQUIRED)
pkg_check_modules(HTTPLIB REQUIRED IMPORTED_TARGET cpp-httplib)

# -- Tests --------------------------------------------------------------------------------------
find_package(Catch2 2 REQUIRED)
