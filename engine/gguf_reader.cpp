#include "engine/gguf_reader.hpp"

#include <bit>
#include <cstdio>
#include <cstring>
#include <limits>
#include <unordered_set>

namespace duet::engine {

static_assert(std::endian::native == std::endian::little,
              "the GGUF reader maps little-endian files directly");

namespace {

// -- bounds -----------------------------------------------------------------------------------
// Limits a real model never reaches but that keep every allocation proportional to the file:
// a count is also checked against the bytes left, since each entry takes a minimum size.

/// Longest metadata key (gguf.md: keys are at most 65535 bytes).
constexpr std::uint64_t key_bytes_max = 65535;
/// Smallest KV: 8-byte key length, 1 key byte, 4-byte type, 1-byte value.
constexpr std::uint64_t kv_bytes_min = 14;
/// Smallest tensor info: 8-byte name length, 4-byte n_dims, one 8-byte dim, type, offset.
constexpr std::uint64_t tensor_info_bytes_min = 8 + 4 + 8 + 4 + 8;
/// Hard caps on top of the byte checks (llama.cpp's largest models have ~2,000 tensors).
constexpr std::uint64_t kv_count_max = 1u << 20;
constexpr std::uint64_t tensor_count_max = 1u << 20;

/// x rounded up to a multiple of the power of two a, or nullopt on overflow.
std::optional<std::uint64_t> align_up(std::uint64_t x, std::uint64_t a) {
  if (x > std::numeric_limits<std::uint64_t>::max() - (a - 1)) return std::nullopt;
  return (x + a - 1) & ~(a - 1);
}

/// Bounds-checked sequential reader over the file bytes; every failure names file and offset.
class cursor {
public:
  cursor(std::span<const std::uint8_t> bytes, const std::string& source)
      : bytes_(bytes), source_(source) {}

  std::uint64_t pos() const { return pos_; }
  std::uint64_t left() const { return bytes_.size() - pos_; }

  [[noreturn]] void fail(std::uint64_t at, const std::string& what,
                         engine_errc code = engine_errc::bad_format) const {
    throw engine_error(code, source_ + ": offset " + std::to_string(at) + ": " + what);
  }

  void need(std::uint64_t n, std::string_view what) const {
    if (n > left())
      fail(pos_, "file ends while reading " + std::string{what} + " (needs " + std::to_string(n) +
                     " bytes, " + std::to_string(left()) + " left in a file of " +
                     std::to_string(bytes_.size()) + " bytes)");
  }

  template <class T>
  T read(std::string_view what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  std::string_view read_string(std::string_view what, std::uint64_t max_len) {
    const std::uint64_t at = pos_;
    const auto len = read<std::uint64_t>(what);
    if (len > max_len)
      fail(at, std::string{what} + " has length " + std::to_string(len) + ", expected at most " +
                   std::to_string(max_len));
    need(len, what);
    std::string_view s{reinterpret_cast<const char*>(bytes_.data() + pos_),
                       static_cast<std::size_t>(len)};
    pos_ += len;
    return s;
  }

  const std::uint8_t* here() const { return bytes_.data() + pos_; }
  /// The next 8 bytes as a u64 without moving (precondition: left() >= 8).
  std::uint64_t peek_u64() const {
    std::uint64_t v;
    std::memcpy(&v, bytes_.data() + pos_, sizeof v);
    return v;
  }
  void skip(std::uint64_t n, std::string_view what) {
    need(n, what);
    pos_ += n;
  }

private:
  std::span<const std::uint8_t> bytes_;
  const std::string& source_;
  std::uint64_t pos_ = 0;
};

void read_scalar(cursor& c, std::uint32_t type, gguf_value& v, std::string_view what) {
  switch (static_cast<gguf_type>(type)) {
  case gguf_type::u8:
    v.uint_value = c.read<std::uint8_t>(what);
    return;
  case gguf_type::i8:
    v.int_value = c.read<std::int8_t>(what);
    return;
  case gguf_type::u16:
    v.uint_value = c.read<std::uint16_t>(what);
    return;
  case gguf_type::i16:
    v.int_value = c.read<std::int16_t>(what);
    return;
  case gguf_type::u32:
    v.uint_value = c.read<std::uint32_t>(what);
    return;
  case gguf_type::i32:
    v.int_value = c.read<std::int32_t>(what);
    return;
  case gguf_type::f32:
    v.float_value = c.read<float>(what);
    return;
  case gguf_type::boolean:
    v.uint_value = c.read<std::uint8_t>(what) != 0 ? 1 : 0;
    return;
  case gguf_type::u64:
    v.uint_value = c.read<std::uint64_t>(what);
    return;
  case gguf_type::i64:
    v.int_value = c.read<std::int64_t>(what);
    return;
  case gguf_type::f64:
    v.float_value = c.read<double>(what);
    return;
  case gguf_type::string:
    v.string_value = c.read_string(what, std::numeric_limits<std::uint64_t>::max());
    return;
  case gguf_type::array:
    break;
  }
  c.fail(c.pos(), "internal: read_scalar on a non-scalar type");
}

void read_value(cursor& c, std::uint32_t type, gguf_value& v, const std::string& key) {
  v.type = type;
  v.offset = c.pos();
  const std::string what = "the value of '" + key + "'";
  if (type == static_cast<std::uint32_t>(gguf_type::array)) {
    const std::uint64_t at = c.pos();
    v.array_type = c.read<std::uint32_t>("the element type of '" + key + "'");
    if (v.array_type == static_cast<std::uint32_t>(gguf_type::array))
      c.fail(at, "metadata '" + key + "' is an array of arrays, which this reader does not support",
             engine_errc::unsupported);
    if (v.array_type > static_cast<std::uint32_t>(gguf_type::f64))
      c.fail(at, "metadata '" + key + "' has unknown array element type " +
                     std::to_string(v.array_type) + " (expected 0..12)");
    const std::uint64_t count_at = c.pos();
    v.array_count = c.read<std::uint64_t>("the element count of '" + key + "'");
    const std::uint64_t elem_min = v.array_type == static_cast<std::uint32_t>(gguf_type::string)
                                       ? 8
                                       : gguf_scalar_size(v.array_type);
    if (v.array_count > c.left() / elem_min)
      c.fail(count_at, "metadata '" + key + "' claims " + std::to_string(v.array_count) + " " +
                           gguf_type_name(v.array_type) + " elements but only " +
                           std::to_string(c.left()) + " bytes are left (at most " +
                           std::to_string(c.left() / elem_min) + " would fit)");
    if (v.array_type == static_cast<std::uint32_t>(gguf_type::string)) {
      v.array_strings.reserve(static_cast<std::size_t>(v.array_count));
      for (std::uint64_t i = 0; i < v.array_count; ++i) {
        // The element's description is only built when it is needed for an error (a
        // vocabulary has 100k+ strings).
        if (c.left() < 8 || c.peek_u64() > c.left() - 8)
          (void)c.read_string("element " + std::to_string(i) + " of '" + key + "'",
                              std::numeric_limits<std::uint64_t>::max());
        v.array_strings.push_back(c.read_string({}, std::numeric_limits<std::uint64_t>::max()));
      }
    } else {
      v.array_data = c.here();
      c.skip(v.array_count * elem_min, what); // cannot overflow: count <= left / elem_min
    }
    return;
  }
  if (type > static_cast<std::uint32_t>(gguf_type::f64))
    c.fail(v.offset - 4, "metadata '" + key + "' has unknown value type " + std::to_string(type) +
                             " (expected 0..12)");
  read_scalar(c, type, v, what);
}

} // namespace

// -- gguf_value -------------------------------------------------------------------------------

std::optional<std::int64_t> gguf_value::as_integer() const {
  switch (static_cast<gguf_type>(type)) {
  case gguf_type::u8:
  case gguf_type::u16:
  case gguf_type::u32:
  case gguf_type::boolean:
    return static_cast<std::int64_t>(uint_value);
  case gguf_type::u64:
    if (uint_value > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
      return std::nullopt;
    return static_cast<std::int64_t>(uint_value);
  case gguf_type::i8:
  case gguf_type::i16:
  case gguf_type::i32:
  case gguf_type::i64:
    return int_value;
  default:
    return std::nullopt;
  }
}

std::optional<double> gguf_value::as_float() const {
  if (type == static_cast<std::uint32_t>(gguf_type::f32) ||
      type == static_cast<std::uint32_t>(gguf_type::f64))
    return float_value;
  return std::nullopt;
}

namespace {
template <class T>
T load_at(const std::uint8_t* p, std::uint64_t i) {
  T v;
  std::memcpy(&v, p + i * sizeof(T), sizeof(T));
  return v;
}
} // namespace

std::int64_t gguf_value::array_integer(std::uint64_t i) const {
  switch (static_cast<gguf_type>(array_type)) {
  case gguf_type::u8:
  case gguf_type::boolean:
    return load_at<std::uint8_t>(array_data, i);
  case gguf_type::i8:
    return load_at<std::int8_t>(array_data, i);
  case gguf_type::u16:
    return load_at<std::uint16_t>(array_data, i);
  case gguf_type::i16:
    return load_at<std::int16_t>(array_data, i);
  case gguf_type::u32:
    return load_at<std::uint32_t>(array_data, i);
  case gguf_type::i32:
    return load_at<std::int32_t>(array_data, i);
  case gguf_type::u64: {
    auto u = load_at<std::uint64_t>(array_data, i);
    return u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())
               ? std::numeric_limits<std::int64_t>::max()
               : static_cast<std::int64_t>(u);
  }
  case gguf_type::i64:
    return load_at<std::int64_t>(array_data, i);
  default:
    return 0;
  }
}

double gguf_value::array_float(std::uint64_t i) const {
  switch (static_cast<gguf_type>(array_type)) {
  case gguf_type::f32:
    return load_at<float>(array_data, i);
  case gguf_type::f64:
    return load_at<double>(array_data, i);
  default:
    return static_cast<double>(array_integer(i));
  }
}

// -- gguf_file --------------------------------------------------------------------------------

const gguf_value* gguf_file::find(std::string_view key) const {
  for (const auto& kv : metadata)
    if (kv.key == key) return &kv.value;
  return nullptr;
}

const gguf_tensor_info* gguf_file::find_tensor(std::string_view name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

// -- parse ------------------------------------------------------------------------------------

gguf_file parse_gguf(std::span<const std::uint8_t> bytes, std::string source) {
  gguf_file file;
  file.source = std::move(source);
  file.file_bytes = bytes.size();
  cursor c{bytes, file.source};

  // header
  const auto magic = c.read<std::uint32_t>("the GGUF magic");
  if (magic != gguf_magic) {
    char shown[32];
    std::snprintf(shown, sizeof shown, "%02x %02x %02x %02x", magic & 0xffu, (magic >> 8) & 0xffu,
                  (magic >> 16) & 0xffu, magic >> 24);
    c.fail(0, std::string{"bad magic: bytes "} + shown +
                  ", expected \"GGUF\" (47 47 55 46): not a GGUF file");
  }
  file.version = c.read<std::uint32_t>("the GGUF version");
  if (file.version == 0x02000000u || file.version == 0x03000000u)
    c.fail(4,
           "big-endian GGUF file (version field " +
               std::to_string(__builtin_bswap32(file.version)) +
               " byte-swapped); only little-endian files are supported",
           engine_errc::unsupported);
  if (file.version != 2 && file.version != 3)
    c.fail(4, "unsupported GGUF version " + std::to_string(file.version) + ", expected 3 (or 2)",
           engine_errc::unsupported);
  const auto tensor_count = c.read<std::uint64_t>("the tensor count");
  const auto kv_count = c.read<std::uint64_t>("the metadata key/value count");
  if (kv_count > kv_count_max || kv_count > c.left() / kv_bytes_min)
    c.fail(16, "absurd metadata key/value count " + std::to_string(kv_count) + ": the " +
                   std::to_string(c.left()) + " bytes after the header hold at most " +
                   std::to_string(std::min(kv_count_max, c.left() / kv_bytes_min)));
  if (tensor_count > tensor_count_max || tensor_count > c.left() / tensor_info_bytes_min)
    c.fail(8, "absurd tensor count " + std::to_string(tensor_count) + ": the " +
                  std::to_string(c.left()) + " bytes after the header hold at most " +
                  std::to_string(std::min(tensor_count_max, c.left() / tensor_info_bytes_min)) +
                  " tensor infos");

  // metadata
  file.metadata.reserve(static_cast<std::size_t>(kv_count));
  std::unordered_set<std::string_view> keys;
  for (std::uint64_t i = 0; i < kv_count; ++i) {
    const std::uint64_t at = c.pos();
    gguf_kv kv;
    kv.key = c.read_string("metadata key " + std::to_string(i), key_bytes_max);
    const std::string key{kv.key};
    if (!keys.insert(kv.key).second) c.fail(at, "duplicate metadata key '" + key + "'");
    const auto type = c.read<std::uint32_t>("the value type of '" + key + "'");
    read_value(c, type, kv.value, key);
    file.metadata.push_back(std::move(kv));
  }
  if (const auto* a = file.find("general.alignment")) {
    if (a->type != static_cast<std::uint32_t>(gguf_type::u32))
      c.fail(a->offset, "general.alignment has type " + gguf_type_name(a->type) + ", expected u32");
    if (a->uint_value == 0 || !std::has_single_bit(a->uint_value))
      c.fail(a->offset,
             "general.alignment is " + std::to_string(a->uint_value) + ", expected a power of two");
    file.alignment = a->uint_value;
  }

  // tensor infos
  file.tensors.reserve(static_cast<std::size_t>(tensor_count));
  std::unordered_set<std::string_view> names;
  for (std::uint64_t i = 0; i < tensor_count; ++i) {
    gguf_tensor_info t;
    t.info_offset = c.pos();
    t.name = c.read_string("the name of tensor " + std::to_string(i), gguf_max_tensor_name);
    const std::string name{t.name};
    if (!names.insert(t.name).second) c.fail(t.info_offset, "duplicate tensor name '" + name + "'");
    const std::uint64_t dims_at = c.pos();
    t.n_dims = c.read<std::uint32_t>("the dimension count of tensor '" + name + "'");
    if (t.n_dims == 0 || t.n_dims > gguf_max_dims)
      c.fail(dims_at, "tensor '" + name + "' has " + std::to_string(t.n_dims) +
                          " dimensions, expected 1.." + std::to_string(gguf_max_dims));
    std::uint64_t elements = 1;
    for (std::uint32_t d = 0; d < t.n_dims; ++d) {
      const std::uint64_t ne_at = c.pos();
      t.ne[d] =
          c.read<std::uint64_t>("dimension " + std::to_string(d) + " of tensor '" + name + "'");
      // ggml holds ne as int64 and the element count must fit too.
      constexpr auto ne_max = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
      if (t.ne[d] > ne_max || (t.ne[d] != 0 && elements > ne_max / t.ne[d]))
        c.fail(ne_at, "absurd dimension ne[" + std::to_string(d) +
                          "] = " + std::to_string(t.ne[d]) + " of tensor '" + name +
                          "': the element count overflows int64");
      elements *= t.ne[d];
    }
    const std::uint64_t type_at = c.pos();
    t.type = c.read<std::uint32_t>("the type of tensor '" + name + "'");
    const auto traits = ggml_traits(t.type);
    if (!traits)
      c.fail(type_at,
             "tensor '" + name + "' has unknown ggml tensor type " + std::to_string(t.type) +
                 " (this reader knows f32=0, f16=1, q8_0=8 "
                 "and the sizes of other common types)",
             engine_errc::unsupported);
    if (t.ne[0] % traits->block_values != 0)
      c.fail(t.info_offset, "tensor '" + name + "' of type " + std::string{traits->name} +
                                " has ne[0] = " + std::to_string(t.ne[0]) +
                                ", expected a multiple of its block size " +
                                std::to_string(traits->block_values));
    // elements / block_values * block_bytes <= INT64_MAX / 1 * 292 can overflow: check.
    const std::uint64_t blocks = elements / traits->block_values;
    if (blocks > std::numeric_limits<std::uint64_t>::max() / traits->block_bytes)
      c.fail(t.info_offset, "absurd size of tensor '" + name + "': byte count overflows");
    t.bytes = blocks * traits->block_bytes;
    const std::uint64_t offset_at = c.pos();
    t.offset = c.read<std::uint64_t>("the data offset of tensor '" + name + "'");
    if (t.offset % file.alignment != 0)
      c.fail(offset_at, "tensor '" + name + "' data offset " + std::to_string(t.offset) +
                            " is not a multiple of the alignment " +
                            std::to_string(file.alignment));
    file.tensors.push_back(t);
  }

  // data section: starts at the next multiple of the alignment
  const auto data_offset = align_up(c.pos(), file.alignment);
  if (!data_offset || (*data_offset > bytes.size() && !file.tensors.empty()))
    c.fail(c.pos(), "the tensor data section (aligned to " + std::to_string(file.alignment) +
                        ") would start past the end of the file (" + std::to_string(bytes.size()) +
                        " bytes)");
  file.data_offset = *data_offset;
  const std::uint64_t data_bytes =
      file.data_offset <= bytes.size() ? bytes.size() - file.data_offset : 0;
  for (auto& t : file.tensors) {
    if (t.offset > data_bytes || t.bytes > data_bytes - t.offset)
      c.fail(t.info_offset, "tensor '" + std::string{t.name} +
                                "' data runs past the end of the file: bytes [" +
                                std::to_string(file.data_offset) + " + " +
                                std::to_string(t.offset) + ", +" + std::to_string(t.bytes) +
                                ") but the file has " + std::to_string(bytes.size()) + " bytes");
    t.data = bytes.data() + file.data_offset + t.offset;
  }
  return file;
}

} // namespace duet::engine
