#pragma once

// Hardware profiles as data. Placement reads them: which roles a node can take, whether a model
// (weights + KV budget) fits its memory, and the roofline figures the `sim` executor and the
// benchmarks use. Execution today is the real CPU engine; a profile only steers placement.
//
// Published figures carry their source next to them. They are per chip (per wafer for the
// WSE-3), dense, at the precision named; treat them as upper bounds, not promises.

#include "actors/errors.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace duet::actors {

/// One hardware class.
struct hardware_profile {
  std::string name;                ///< "trainium2", "wse3", "cpu", ...
  double peak_flops = 0;           ///< dense FLOP/s at the precision in `precision`
  std::string precision;           ///< what peak_flops counts, e.g. "bf16 dense"
  double memory_bytes = 0;         ///< memory that holds weights + KV
  double memory_bandwidth_bps = 0; ///< bytes/s between that memory and the compute
  double link_bandwidth_bps = 0;   ///< bytes/s off the device (KV transfer)
  bool prefill_capable = true;     ///< default role set; a node may narrow it
  bool decode_capable = true;      ///< default role set; a node may narrow it
  std::string source;              ///< where the figures come from
};

/// The built-in profiles' names.
std::vector<std::string> profile_names();

/// A built-in profile by name ("trainium2", "wse3", "cpu"); nullopt for an unknown name.
/// `cpu` is this host: memory from sysconf, bandwidth/FLOP/s from the measured defaults below
/// unless $DUET_CPU_MEMORY_BPS / $DUET_CPU_FLOPS override them.
std::optional<hardware_profile> find_profile(const std::string& name);

/// What a model needs from one node holding `layers` of its `n_layers` layers.
struct model_footprint {
  double weight_bytes_total = 0; ///< all layers + embeddings + classifier
  int n_layers = 0;
  double kv_bytes_per_token = 0; ///< all layers, K and V
  int kv_budget_tokens = 0;      ///< tokens of KV a node must hold (pool size)

  double weight_bytes_for(int layers) const;
  double kv_bytes_for(int layers) const;
};

/// Whether `layers` layers of the model fit on `profile`: an error of kind does_not_fit whose
/// text gives both sides of the inequality when not.
caf::error check_fit(const hardware_profile& profile, const model_footprint& model, int layers);

/// The most layers that fit on `profile` (0 when not even one does).
int max_layers_that_fit(const hardware_profile& profile, const model_footprint& model);

} // namespace duet::actors
