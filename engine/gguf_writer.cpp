#include "engine/gguf_writer.hpp"

#include "engine/error.hpp"

#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>

namespace duet::engine {

static_assert(std::endian::native == std::endian::little,
              "the GGUF writer stores host values as little-endian");

namespace {

template <class T>
void put(std::vector<std::uint8_t>& out, T v) {
  // resize + memcpy rather than insert(end, p, p + n): g++ 12 at -O3 reports a false
  // -Wstringop-overflow on the first insert into an empty vector.
  const std::size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &v, sizeof(T));
}

std::uint64_t pad_to(std::uint64_t x, std::uint64_t a) {
  return (x + a - 1) / a * a;
}

} // namespace

gguf_writer::gguf_writer(std::uint64_t alignment) : alignment_(alignment) {
  if (alignment == 0 || !std::has_single_bit(alignment))
    throw engine_error(engine_errc::invalid_argument, "gguf_writer: alignment " +
                                                          std::to_string(alignment) +
                                                          " is not a power of two");
  // Written like any other key (gguf.md), and only when it differs from the default, as ggml.
  if (alignment != gguf_default_alignment)
    add_u32("general.alignment", static_cast<std::uint32_t>(alignment));
}

gguf_writer::~gguf_writer() {
  // Never leave a half-written model behind: an unfinished file is removed.
  if (out_ != nullptr) {
    std::fclose(out_);
    std::remove(partial_path().c_str());
  }
}

std::string gguf_writer::partial_path() const {
  return path_ + ".partial";
}

void gguf_writer::put_string(std::vector<std::uint8_t>& out, std::string_view s) const {
  put<std::uint64_t>(out, s.size());
  out.insert(out.end(), s.begin(), s.end());
}

void gguf_writer::key(std::string_view k, gguf_type type) {
  if (out_ != nullptr)
    throw engine_error(engine_errc::invalid_argument,
                       "gguf_writer: metadata added after open(): " + std::string{k});
  put_string(kv_bytes_, k);
  put<std::uint32_t>(kv_bytes_, static_cast<std::uint32_t>(type));
  ++kv_count_;
}

void gguf_writer::add_string(std::string_view k, std::string_view value) {
  key(k, gguf_type::string);
  put_string(kv_bytes_, value);
}
void gguf_writer::add_u32(std::string_view k, std::uint32_t value) {
  key(k, gguf_type::u32);
  put(kv_bytes_, value);
}
void gguf_writer::add_i32(std::string_view k, std::int32_t value) {
  key(k, gguf_type::i32);
  put(kv_bytes_, value);
}
void gguf_writer::add_f32(std::string_view k, float value) {
  key(k, gguf_type::f32);
  put(kv_bytes_, value);
}
void gguf_writer::add_bool(std::string_view k, bool value) {
  key(k, gguf_type::boolean);
  put<std::uint8_t>(kv_bytes_, value ? 1 : 0);
}
void gguf_writer::add_string_array(std::string_view k, std::span<const std::string> values) {
  key(k, gguf_type::array);
  put<std::uint32_t>(kv_bytes_, static_cast<std::uint32_t>(gguf_type::string));
  put<std::uint64_t>(kv_bytes_, values.size());
  for (const auto& v : values) put_string(kv_bytes_, v);
}
void gguf_writer::add_f32_array(std::string_view k, std::span<const float> values) {
  key(k, gguf_type::array);
  put<std::uint32_t>(kv_bytes_, static_cast<std::uint32_t>(gguf_type::f32));
  put<std::uint64_t>(kv_bytes_, values.size());
  for (float v : values) put(kv_bytes_, v);
}
void gguf_writer::add_i32_array(std::string_view k, std::span<const std::int32_t> values) {
  key(k, gguf_type::array);
  put<std::uint32_t>(kv_bytes_, static_cast<std::uint32_t>(gguf_type::i32));
  put<std::uint64_t>(kv_bytes_, values.size());
  for (std::int32_t v : values) put(kv_bytes_, v);
}

void gguf_writer::add_tensor(std::string_view name, std::vector<std::uint64_t> ne,
                             std::uint32_t ggml_type) {
  const std::string n{name};
  if (out_ != nullptr)
    throw engine_error(engine_errc::invalid_argument,
                       "gguf_writer: tensor added after open(): " + n);
  const auto traits = ggml_traits(ggml_type);
  if (!traits)
    throw engine_error(engine_errc::invalid_argument, "gguf_writer: tensor " + n +
                                                          ": unknown ggml type " +
                                                          std::to_string(ggml_type));
  if (name.empty() || name.size() >= gguf_max_tensor_name)
    throw engine_error(engine_errc::invalid_argument,
                       "gguf_writer: tensor name '" + n + "' must be 1..63 bytes");
  if (ne.empty() || ne.size() > gguf_max_dims)
    throw engine_error(engine_errc::invalid_argument,
                       "gguf_writer: tensor " + n + " needs 1..4 dimensions");
  std::uint64_t elements = 1;
  for (auto d : ne) {
    if (d == 0 || elements > (std::uint64_t{1} << 48) / d)
      throw engine_error(engine_errc::invalid_argument,
                         "gguf_writer: tensor " + n + " has a zero or absurd dimension");
    elements *= d;
  }
  if (ne[0] % traits->block_values != 0)
    throw engine_error(engine_errc::invalid_argument,
                       "gguf_writer: tensor " + n + ": ne[0] = " + std::to_string(ne[0]) +
                           " is not a multiple of the " + std::string{traits->name} +
                           " block size " + std::to_string(traits->block_values));
  for (const auto& t : tensors_)
    if (t.name == name)
      throw engine_error(engine_errc::invalid_argument, "gguf_writer: duplicate tensor " + n);
  const std::uint64_t bytes = elements / traits->block_values * traits->block_bytes;
  tensors_.push_back({n, std::move(ne), ggml_type, data_bytes_, bytes});
  data_bytes_ += pad_to(bytes, alignment_);
}

std::vector<std::uint8_t> gguf_writer::header_bytes() const {
  std::vector<std::uint8_t> out;
  put<std::uint32_t>(out, gguf_magic);
  put<std::uint32_t>(out, gguf_version);
  put<std::uint64_t>(out, tensors_.size());
  put<std::uint64_t>(out, kv_count_);
  out.insert(out.end(), kv_bytes_.begin(), kv_bytes_.end());
  for (const auto& t : tensors_) {
    put_string(out, t.name);
    put<std::uint32_t>(out, static_cast<std::uint32_t>(t.ne.size()));
    for (auto d : t.ne) put<std::uint64_t>(out, d);
    put<std::uint32_t>(out, t.type);
    put<std::uint64_t>(out, t.offset);
  }
  out.resize(pad_to(out.size(), alignment_), 0);
  return out;
}

std::uint64_t gguf_writer::file_bytes() const {
  return header_bytes().size() + data_bytes_;
}

void gguf_writer::put_raw(const void* p, std::size_t n) {
  if (n != 0 && std::fwrite(p, 1, n, out_) != n)
    throw engine_error(engine_errc::io_error,
                       partial_path() + ": write failed: " + std::strerror(errno));
}

void gguf_writer::open(const std::string& path) {
  if (out_ != nullptr)
    throw engine_error(engine_errc::invalid_argument, "gguf_writer: already open");
  path_ = path;
  out_ = std::fopen(partial_path().c_str(), "wb");
  if (out_ == nullptr)
    throw engine_error(engine_errc::io_error,
                       partial_path() + ": cannot create: " + std::strerror(errno));
  const auto header = header_bytes();
  put_raw(header.data(), header.size());
  current_ = 0;
  current_bytes_ = 0;
}

void gguf_writer::pad_current() {
  static constexpr std::uint8_t zeros[256] = {};
  std::uint64_t pad = pad_to(current_bytes_, alignment_) - current_bytes_;
  while (pad > 0) {
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(pad, sizeof zeros));
    put_raw(zeros, n);
    pad -= n;
  }
}

void gguf_writer::write(std::span<const std::uint8_t> bytes) {
  if (out_ == nullptr) throw engine_error(engine_errc::invalid_argument, "gguf_writer: not open");
  while (!bytes.empty()) {
    if (current_ >= tensors_.size())
      throw engine_error(engine_errc::invalid_argument,
                         path_ + ": more tensor data written than declared");
    const auto& t = tensors_[current_];
    const std::uint64_t room = t.bytes - current_bytes_;
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(room, bytes.size()));
    put_raw(bytes.data(), n);
    current_bytes_ += n;
    bytes = bytes.subspan(n);
    if (current_bytes_ == t.bytes) {
      pad_current();
      ++current_;
      current_bytes_ = 0;
    }
  }
}

void gguf_writer::close() {
  if (out_ == nullptr) throw engine_error(engine_errc::invalid_argument, "gguf_writer: not open");
  if (current_ != tensors_.size()) {
    const std::string name = tensors_[current_].name;
    std::fclose(out_);
    out_ = nullptr;
    std::remove(partial_path().c_str());
    throw engine_error(engine_errc::invalid_argument,
                       path_ + ": closed before the data of tensor '" + name + "' was written");
  }
  const bool ok = std::fflush(out_) == 0;
  const int err = errno;
  const bool closed = std::fclose(out_) == 0;
  out_ = nullptr;
  if (!ok || !closed) {
    std::remove(partial_path().c_str());
    throw engine_error(engine_errc::io_error, path_ + ": write failed: " + std::strerror(err));
  }
  // The finished file appears under its name at once (rename is atomic within a filesystem).
  if (std::rename(partial_path().c_str(), path_.c_str()) != 0) {
    const int rerr = errno;
    std::remove(partial_path().c_str());
    throw engine_error(engine_errc::io_error,
                       path_ +
                           ": cannot rename the finished file into place: " + std::strerror(rerr));
  }
}

// -- row codecs ---------------------------------------------------------------------------------

void encode_row(const float* x, std::size_t n, dtype t, std::uint8_t* out) {
  switch (t) {
  case dtype::f32:
    std::memcpy(out, x, n * sizeof(float));
    return;
  case dtype::f16:
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint16_t h = f32_to_f16(x[i]);
      std::memcpy(out + 2 * i, &h, 2);
    }
    return;
  case dtype::q8_0:
    for (std::size_t b = 0; b < n / q8_0_block_values; ++b) {
      const float* xb = x + b * q8_0_block_values;
      float amax = 0.0f;
      for (std::size_t j = 0; j < q8_0_block_values; ++j) amax = std::max(amax, std::fabs(xb[j]));
      const float d = amax / 127.0f;
      const float id = d != 0.0f ? 1.0f / d : 0.0f;
      q8_0_block blk;
      blk.d = f32_to_f16(d);
      for (std::size_t j = 0; j < q8_0_block_values; ++j) {
        // round(x * id) is within [-127, 127] for finite input; the clamp only keeps a NaN or
        // inf in a corrupt source from becoming an undefined float->int conversion.
        const float q = std::roundf(xb[j] * id);
        blk.qs[j] = static_cast<std::int8_t>(q >= -127.0f && q <= 127.0f ? q : 0.0f);
      }
      std::memcpy(out + b * sizeof(q8_0_block), &blk, sizeof blk);
    }
    return;
  }
}

void decode_row(const std::uint8_t* in, std::size_t n, dtype t, float* out) {
  switch (t) {
  case dtype::f32:
    std::memcpy(out, in, n * sizeof(float));
    return;
  case dtype::f16:
    for (std::size_t i = 0; i < n; ++i) {
      std::uint16_t h;
      std::memcpy(&h, in + 2 * i, 2);
      out[i] = f16_to_f32(h);
    }
    return;
  case dtype::q8_0:
    for (std::size_t b = 0; b < n / q8_0_block_values; ++b) {
      q8_0_block blk;
      std::memcpy(&blk, in + b * sizeof(q8_0_block), sizeof blk);
      const float d = f16_to_f32(blk.d);
      for (std::size_t j = 0; j < q8_0_block_values; ++j)
        out[b * q8_0_block_values + j] = d * static_cast<float>(blk.qs[j]);
    }
    return;
  }
}

} // namespace duet::engine
