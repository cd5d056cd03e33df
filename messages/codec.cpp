#include "messages/codec.hpp"

namespace duet::messages {

problem problem_from(const kj::Exception& e, std::string_view what) {
  std::string description = e.getDescription().cStr();
  problem p;
  p.context = std::string(what) + ": " + description;
  // Cap'n Proto's wording for these cases (0.9.2): "Message ends prematurely", "Exceeded
  // message traversal limit".
  if (description.find("ends prematurely") != std::string::npos ||
      description.find("truncated") != std::string::npos)
    p.kind = problem_kind::truncated;
  else if (description.find("traversal limit") != std::string::npos)
    p.kind = problem_kind::oversized;
  else
    p.kind = problem_kind::malformed;
  return p;
}

aligned_words::aligned_words(std::span<const std::byte> bytes, bool* copied) {
  const std::size_t n_words = bytes.size() / sizeof(capnp::word);
  trailing_ = bytes.size() % sizeof(capnp::word);
  const bool aligned = reinterpret_cast<std::uintptr_t>(bytes.data()) % alignof(capnp::word) == 0;
  if (copied != nullptr) *copied = !aligned;
  if (aligned) {
    words_ = kj::ArrayPtr<const capnp::word>(reinterpret_cast<const capnp::word*>(bytes.data()),
                                             n_words);
  } else {
    copy_ = kj::heapArray<capnp::word>(n_words);
    if (n_words != 0) std::memcpy(copy_.begin(), bytes.data(), n_words * sizeof(capnp::word));
    words_ = kj::ArrayPtr<const capnp::word>(copy_.begin(), copy_.size());
  }
}

std::vector<std::byte> flat_bytes(capnp::MessageBuilder& builder) {
  kj::Array<capnp::word> words = capnp::messageToFlatArray(builder);
  auto bytes = words.asBytes();
  auto* first = reinterpret_cast<const std::byte*>(bytes.begin());
  return std::vector<std::byte>(first, first + bytes.size());
}

} // namespace duet::messages
