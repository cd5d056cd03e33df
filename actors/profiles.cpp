#include "actors/profiles.hpp"

#include <fmt/core.h>

#include <cstdlib>
#include <string>
#include <unistd.h>

namespace duet::actors {

namespace {

double env_or(const char* name, double fallback) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  char* end = nullptr;
  double value = std::strtod(text, &end);
  return (end != text && value > 0) ? value : fallback;
}

hardware_profile trainium2() {
  hardware_profile p;
  p.name = "trainium2";
  // AWS Trainium2 chip: 667 TFLOP/s dense BF16 (1.3 PFLOP/s dense FP8), 96 GiB HBM at
  // 2.9 TB/s; a trn2.48xlarge (16 chips) has 3.2 Tbit/s of EFAv3, i.e. 25 GB/s per chip.
  // Source: aws.amazon.com/ai/machine-learning/trainium and the trn2 instance page
  // (re:Invent, Dec 2024).
  p.peak_flops = 667e12;
  p.precision = "bf16 dense";
  p.memory_bytes = 96.0 * (1ull << 30);
  p.memory_bandwidth_bps = 2.9e12;
  p.link_bandwidth_bps = 25e9;
  p.prefill_capable = true;
  p.decode_capable = true;
  p.source = "AWS Trainium2 chip / trn2.48xlarge specifications, Dec 2024";
  return p;
}

hardware_profile wse3() {
  hardware_profile p;
  p.name = "wse3";
  // Cerebras WSE-3: 125 PFLOP/s peak AI compute, 44 GB on-chip SRAM at 21 PB/s; the CS-3
  // system's external I/O is 12 x 100 GbE = 150 GB/s. Source: Cerebras WSE-3 / CS-3
  // announcement and datasheet, March 2024.
  p.peak_flops = 125e15;
  p.precision = "fp16 peak (sparse-capable)";
  p.memory_bytes = 44e9;
  p.memory_bandwidth_bps = 21e15;
  p.link_bandwidth_bps = 150e9;
  p.prefill_capable = true;
  p.decode_capable = true;
  p.source = "Cerebras WSE-3 / CS-3 datasheet, March 2024";
  return p;
}

hardware_profile cpu() {
  hardware_profile p;
  p.name = "cpu";
  // This host. Bandwidth defaults are the figures measured on the 2-vCPU build machines
  // (shared/NOTES.md: read 1 GiB ~35-40 GB/s on one thread, memcpy 256 MiB ~20 GB/s);
  // `duet bench memory` measures them; the environment overrides them.
  long pages = sysconf(_SC_PHYS_PAGES);
  long page_bytes = sysconf(_SC_PAGE_SIZE);
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  p.memory_bytes = (pages > 0 && page_bytes > 0) ? double(pages) * double(page_bytes) : 8e9;
  p.memory_bandwidth_bps = env_or("DUET_CPU_MEMORY_BPS", 20e9);
  // AVX2: 2 FMA units x 8 f32 lanes x 2 FLOP at ~3 GHz per core.
  p.peak_flops = env_or("DUET_CPU_FLOPS", double(cores > 0 ? cores : 1) * 96e9);
  p.precision = "f32";
  p.link_bandwidth_bps = env_or("DUET_CPU_LINK_BPS", 20e9);
  p.source = "this host: sysconf memory, measured defaults (shared/NOTES.md), env overrides";
  return p;
}

} // namespace

std::vector<std::string> profile_names() {
  return {"trainium2", "wse3", "cpu"};
}

std::optional<hardware_profile> find_profile(const std::string& name) {
  if (name == "trainium2") return trainium2();
  if (name == "wse3") return wse3();
  if (name == "cpu") return cpu();
  return std::nullopt;
}

double model_footprint::weight_bytes_for(int layers) const {
  if (n_layers <= 0) return weight_bytes_total;
  // Embedding + classifier travel with every shard that needs them; counting the whole
  // model's share per layer keeps the split conservative.
  return weight_bytes_total * double(layers) / double(n_layers);
}

double model_footprint::kv_bytes_for(int layers) const {
  if (n_layers <= 0) return kv_bytes_per_token * kv_budget_tokens;
  return kv_bytes_per_token * double(kv_budget_tokens) * double(layers) / double(n_layers);
}

caf::error check_fit(const hardware_profile& profile, const model_footprint& model, int layers) {
  double need = model.weight_bytes_for(layers) + model.kv_bytes_for(layers);
  if (need <= profile.memory_bytes) return caf::none;
  return make_error(fabric_errc::does_not_fit,
                    fmt::format("{} layers need {:.2f} GB (weights {:.2f} GB + KV budget {:.2f} GB "
                                "for {} tokens) but a {} node holds {:.2f} GB",
                                layers, need / 1e9, model.weight_bytes_for(layers) / 1e9,
                                model.kv_bytes_for(layers) / 1e9, model.kv_budget_tokens,
                                profile.name, profile.memory_bytes / 1e9));
}

int max_layers_that_fit(const hardware_profile& profile, const model_footprint& model) {
  int best = 0;
  for (int layers = 1; layers <= model.n_layers; ++layers)
    if (!check_fit(profile, model, layers)) best = layers;
  return best;
}

} // namespace duet::actors
