#pragma once

// A strict reader of the Prometheus text exposition format (version 0.0.4), for tests: it
// checks the grammar (HELP/TYPE lines, metric and label names, quoted label values with
// escapes, float values), that a family's TYPE comes once and before its samples, that a
// family's samples are contiguous, and the histogram invariants (cumulative buckets, a +Inf
// bucket equal to _count, a _sum). It returns every sample so tests can read values.

#include <cmath>
#include <cstdlib>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace duet::test {

struct prom_sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

struct prom_exposition {
  std::map<std::string, std::string> types; ///< family -> counter|gauge|histogram|summary|untyped
  std::vector<prom_sample> samples;

  /// Sum of the samples named `name` whose labels include `match`; nullopt if none.
  std::optional<double> value(const std::string& name,
                              const std::map<std::string, std::string>& match = {}) const {
    std::optional<double> total;
    for (const auto& s : samples) {
      if (s.name != name) continue;
      bool ok = true;
      for (const auto& [k, v] : match) {
        auto it = s.labels.find(k);
        ok = ok && it != s.labels.end() && it->second == v;
      }
      if (ok) total = total.value_or(0) + s.value;
    }
    return total;
  }
};

namespace prom_detail {

inline bool metric_name(const std::string& s) {
  static const std::regex re{"[a-zA-Z_:][a-zA-Z0-9_:]*"};
  return std::regex_match(s, re);
}
inline bool label_name(const std::string& s) {
  static const std::regex re{"[a-zA-Z_][a-zA-Z0-9_]*"};
  return std::regex_match(s, re);
}
inline double parse_value(const std::string& s, int line) {
  if (s == "+Inf" || s == "Inf") return INFINITY;
  if (s == "-Inf") return -INFINITY;
  if (s == "NaN") return NAN;
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (s.empty() || end != s.c_str() + s.size())
    throw std::runtime_error("line " + std::to_string(line) + ": bad value '" + s + "'");
  return v;
}
/// The family a sample belongs to, given the declared types.
inline std::string family_of(const std::string& name,
                             const std::map<std::string, std::string>& types) {
  for (const char* suffix : {"_bucket", "_sum", "_count"}) {
    std::string sfx = suffix;
    if (name.size() > sfx.size() && name.compare(name.size() - sfx.size(), sfx.size(), sfx) == 0) {
      std::string base = name.substr(0, name.size() - sfx.size());
      auto it = types.find(base);
      if (it != types.end() && (it->second == "histogram" || it->second == "summary")) return base;
    }
  }
  return name;
}

} // namespace prom_detail

/// Parses `text`; throws std::runtime_error naming the line of the first violation.
inline prom_exposition parse_prometheus_text(const std::string& text) {
  using namespace prom_detail;
  prom_exposition out;
  std::set<std::string> finished_families;
  std::string current_family;
  std::istringstream in{text};
  std::string line;
  int n = 0;
  auto fail = [&](const std::string& why) {
    throw std::runtime_error("line " + std::to_string(n) + ": " + why + ": '" + line + "'");
  };
  while (std::getline(in, line)) {
    ++n;
    if (line.empty()) continue;
    if (line[0] == '#') {
      std::istringstream words{line.substr(1)};
      std::string kind, name;
      words >> kind >> name;
      if (kind == "TYPE") {
        std::string type;
        words >> type;
        if (!metric_name(name)) fail("bad metric name in TYPE");
        if (type != "counter" && type != "gauge" && type != "histogram" && type != "summary" &&
            type != "untyped")
          fail("unknown type");
        if (out.types.count(name)) fail("second TYPE for a family");
        for (const auto& s : out.samples)
          if (family_of(s.name, {{name, type}}) == name) fail("TYPE after samples of its family");
        out.types[name] = type;
      } else if (kind == "HELP") {
        if (!metric_name(name)) fail("bad metric name in HELP");
      }
      continue;
    }
    // name{labels} value [timestamp]
    std::size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
    prom_sample s;
    s.name = line.substr(0, i);
    if (!metric_name(s.name)) fail("bad metric name");
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        std::size_t eq = line.find('=', i);
        if (eq == std::string::npos) fail("label without '='");
        std::string lname = line.substr(i, eq - i);
        if (!label_name(lname)) fail("bad label name '" + lname + "'");
        i = eq + 1;
        if (i >= line.size() || line[i] != '"') fail("label value not quoted");
        ++i;
        std::string value;
        for (;; ++i) {
          if (i >= line.size()) fail("unterminated label value");
          char c = line[i];
          if (c == '"') break;
          if (c == '\\') {
            if (++i >= line.size()) fail("dangling escape");
            char e = line[i];
            if (e == 'n')
              value += '\n';
            else if (e == '\\' || e == '"')
              value += e;
            else
              fail("bad escape");
            continue;
          }
          value += c;
        }
        ++i; // closing quote
        if (s.labels.count(lname)) fail("repeated label");
        s.labels[lname] = value;
        if (i < line.size() && line[i] == ',') ++i;
      }
      if (i >= line.size()) fail("unterminated label set");
      ++i; // '}'
    }
    if (i >= line.size() || line[i] != ' ') fail("no value");
    std::istringstream rest{line.substr(i + 1)};
    std::string value, timestamp, extra;
    rest >> value >> timestamp >> extra;
    if (!extra.empty()) fail("trailing text");
    s.value = parse_value(value, n);
    std::string family = family_of(s.name, out.types);
    if (family != current_family) {
      if (finished_families.count(family)) fail("samples of a family are not contiguous");
      if (!current_family.empty()) finished_families.insert(current_family);
      current_family = family;
    }
    auto type = out.types.find(family);
    if (type != out.types.end() && type->second == "counter" && !(s.value >= 0))
      fail("negative counter");
    if (type != out.types.end() && type->second == "histogram" && s.name == family + "_bucket" &&
        !s.labels.count("le"))
      fail("histogram bucket without le");
    out.samples.push_back(std::move(s));
  }
  // Histogram invariants, per label set (le removed).
  for (const auto& [family, type] : out.types) {
    if (type != "histogram") continue;
    std::map<std::map<std::string, std::string>, std::vector<std::pair<double, double>>> buckets;
    std::map<std::map<std::string, std::string>, double> counts, sums;
    for (const auto& s : out.samples) {
      auto labels = s.labels;
      if (s.name == family + "_bucket") {
        double le = parse_value(labels.at("le"), 0);
        labels.erase("le");
        buckets[labels].push_back({le, s.value});
      } else if (s.name == family + "_count") {
        counts[labels] = s.value;
      } else if (s.name == family + "_sum") {
        sums[labels] = s.value;
      }
    }
    for (const auto& [labels, bs] : buckets) {
      for (std::size_t k = 1; k < bs.size(); ++k)
        if (!(bs[k].first > bs[k - 1].first) || bs[k].second < bs[k - 1].second)
          throw std::runtime_error(family + ": buckets not increasing and cumulative");
      if (bs.empty() || !std::isinf(bs.back().first))
        throw std::runtime_error(family + ": no +Inf bucket");
      if (!counts.count(labels) || counts.at(labels) != bs.back().second)
        throw std::runtime_error(family + ": _count differs from the +Inf bucket");
      if (!sums.count(labels)) throw std::runtime_error(family + ": no _sum");
    }
  }
  return out;
}

} // namespace duet::test
