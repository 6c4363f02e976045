// procflow::codec<T>: how an item is turned into bytes to cross a process boundary, and back.
//
// A codec is a struct with three static functions:
//
//   static std::size_t encoded_size(const T&) noexcept;          // exact byte count
//   static std::byte*  encode(const T&, std::byte* out) noexcept; // writes it, returns the end
//   static T           decode(procflow::decoder& in);            // throws codec_error if bad
//
// Built in: trivially copyable types (raw bytes), std::string, std::vector, std::pair,
// std::tuple, std::optional, std::map, std::unordered_map, and any nesting of those.
// Users specialize procflow::codec<MyType> for their own types (see tests/codec/codec_test.cpp).
// Decoding never reads past its input: every length is checked against the bytes left.
#pragma once

#include <procflow/error.hpp>

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace procflow {

// Bounds-checked reader over encoded bytes. Every take() that would run past the end throws
// codec_error, so a truncated or corrupt buffer can never cause an out-of-bounds read.
class decoder {
 public:
  explicit decoder(std::span<const std::byte> bytes) noexcept
      : pos_(bytes.data()), end_(bytes.data() + bytes.size()) {}

  std::size_t remaining() const noexcept { return static_cast<std::size_t>(end_ - pos_); }
  bool empty() const noexcept { return pos_ == end_; }
  const std::byte* position() const noexcept { return pos_; }

  // Returns the next `n` bytes and moves past them.
  const std::byte* take(std::size_t n) {
    if (n > remaining()) fail_truncated(n);
    const std::byte* p = pos_;
    pos_ += n;
    return p;
  }

  // Reads a LEB128 unsigned varint (at most 10 bytes).
  std::uint64_t take_varint() {
    std::uint64_t value = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
      const auto b = static_cast<std::uint8_t>(*take(1));
      value |= static_cast<std::uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) return value;
    }
    throw codec_error("codec: malformed varint (more than 10 bytes)");
  }

  // Reads an element count and checks it is plausible: every encoded element takes at least
  // one byte, so a count larger than the bytes left is corrupt (and must not drive an allocation).
  std::size_t take_count() {
    const std::uint64_t n = take_varint();
    if (n > remaining())
      throw codec_error("codec: element count " + std::to_string(n) + " exceeds the " +
                        std::to_string(remaining()) + " bytes left");
    return static_cast<std::size_t>(n);
  }

 private:
  [[noreturn]] void fail_truncated(std::size_t wanted) const {
    throw codec_error("codec: truncated input (wanted " + std::to_string(wanted) + " bytes, " +
                      std::to_string(remaining()) + " left)");
  }

  const std::byte* pos_;
  const std::byte* end_;
};

namespace detail {

inline std::size_t varint_size(std::uint64_t v) noexcept {
  std::size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

inline std::byte* put_varint(std::uint64_t v, std::byte* out) noexcept {
  while (v >= 0x80) {
    *out++ = static_cast<std::byte>((v & 0x7f) | 0x80);
    v >>= 7;
  }
  *out++ = static_cast<std::byte>(v);
  return out;
}

}  // namespace detail

// The primary template is deliberately undefined: using a type with no codec is a compile error
// that names codec<YourType> (see the `encodable` concept below).
template <class T>
struct codec;

// Satisfied by every type that can cross a process boundary.
template <class T>
concept encodable = requires(const T& value, std::byte* out, decoder& in) {
  { codec<T>::encoded_size(value) } -> std::convertible_to<std::size_t>;
  { codec<T>::encode(value, out) } -> std::same_as<std::byte*>;
  { codec<T>::decode(in) } -> std::same_as<T>;
};

// True when every value of T encodes to exactly sizeof(T) raw bytes, so a batch of T is a plain
// array and can be copied in bulk.
template <class T>
inline constexpr bool is_raw_codec_v = false;

// Trivially copyable types travel as their object representation. Pointers do not: an address
// means nothing in another process (send what it points to instead).
template <class T>
concept raw_encodable = std::is_trivially_copyable_v<T> && !std::is_same_v<T, bool> && !std::is_pointer_v<T> &&
                        !std::is_member_pointer_v<T>;

template <raw_encodable T>
struct codec<T> {
  static constexpr std::size_t encoded_size(const T&) noexcept { return sizeof(T); }
  static std::byte* encode(const T& value, std::byte* out) noexcept {
    std::memcpy(out, &value, sizeof(T));
    return out + sizeof(T);
  }
  static T decode(decoder& in) {
    T value;
    std::memcpy(&value, in.take(sizeof(T)), sizeof(T));
    return value;
  }
};

template <raw_encodable T>
inline constexpr bool is_raw_codec_v<T> = true;

// bool is checked on decode: any byte other than 0 or 1 is corrupt (and would be UB as a bool).
template <>
struct codec<bool> {
  static constexpr std::size_t encoded_size(bool) noexcept { return 1; }
  static std::byte* encode(bool value, std::byte* out) noexcept {
    *out = static_cast<std::byte>(value ? 1 : 0);
    return out + 1;
  }
  static bool decode(decoder& in) {
    const auto b = static_cast<std::uint8_t>(*in.take(1));
    if (b > 1) throw codec_error("codec: invalid bool byte " + std::to_string(b));
    return b == 1;
  }
};

// std::string: varint length, then the bytes.
template <class Traits, class Alloc>
struct codec<std::basic_string<char, Traits, Alloc>> {
  using string = std::basic_string<char, Traits, Alloc>;
  static std::size_t encoded_size(const string& s) noexcept { return detail::varint_size(s.size()) + s.size(); }
  static std::byte* encode(const string& s, std::byte* out) noexcept {
    out = detail::put_varint(s.size(), out);
    if (!s.empty()) std::memcpy(out, s.data(), s.size());
    return out + s.size();
  }
  static string decode(decoder& in) {
    const std::size_t n = in.take_count();
    const std::byte* p = in.take(n);
    return string(reinterpret_cast<const char*>(p), n);
  }
};

// std::vector: varint count, then the elements (one memcpy when they are raw).
template <encodable T, class Alloc>
struct codec<std::vector<T, Alloc>> {
  using vector = std::vector<T, Alloc>;
  static std::size_t encoded_size(const vector& v) noexcept {
    std::size_t n = detail::varint_size(v.size());
    if constexpr (is_raw_codec_v<T>) {
      n += v.size() * sizeof(T);
    } else {
      for (const auto& e : v) n += codec<T>::encoded_size(e);
    }
    return n;
  }
  static std::byte* encode(const vector& v, std::byte* out) noexcept {
    out = detail::put_varint(v.size(), out);
    if constexpr (is_raw_codec_v<T>) {
      if (!v.empty()) std::memcpy(out, v.data(), v.size() * sizeof(T));
      return out + v.size() * sizeof(T);
    } else {
      for (const auto& e : v) out = codec<T>::encode(e, out);
      return out;
    }
  }
  static vector decode(decoder& in) {
    const std::size_t n = in.take_count();
    vector v;
    if constexpr (is_raw_codec_v<T>) {
      if (n > in.remaining() / sizeof(T)) throw codec_error("codec: vector longer than its input");
      v.resize(n);
      if (n) std::memcpy(v.data(), in.take(n * sizeof(T)), n * sizeof(T));
    } else {
      v.reserve(n);
      for (std::size_t i = 0; i < n; ++i) v.push_back(codec<T>::decode(in));
    }
    return v;
  }
};

template <encodable A, encodable B>
struct codec<std::pair<A, B>> {
  static std::size_t encoded_size(const std::pair<A, B>& p) noexcept {
    return codec<A>::encoded_size(p.first) + codec<B>::encoded_size(p.second);
  }
  static std::byte* encode(const std::pair<A, B>& p, std::byte* out) noexcept {
    return codec<B>::encode(p.second, codec<A>::encode(p.first, out));
  }
  static std::pair<A, B> decode(decoder& in) {
    A a = codec<A>::decode(in);  // sequenced: first, then second
    B b = codec<B>::decode(in);
    return {std::move(a), std::move(b)};
  }
};

template <encodable... Ts>
  requires(sizeof...(Ts) > 0 && !std::is_trivially_copyable_v<std::tuple<Ts...>>)
struct codec<std::tuple<Ts...>> {
  static std::size_t encoded_size(const std::tuple<Ts...>& t) noexcept {
    return std::apply([](const Ts&... e) { return (codec<Ts>::encoded_size(e) + ...); }, t);
  }
  static std::byte* encode(const std::tuple<Ts...>& t, std::byte* out) noexcept {
    std::apply([&out](const Ts&... e) { ((out = codec<Ts>::encode(e, out)), ...); }, t);
    return out;
  }
  static std::tuple<Ts...> decode(decoder& in) {
    // Braced initialisation evaluates left to right, so the elements are read in order.
    return std::tuple<Ts...>{codec<Ts>::decode(in)...};
  }
};

template <encodable T>
  requires(!std::is_trivially_copyable_v<std::optional<T>>)
struct codec<std::optional<T>> {
  static std::size_t encoded_size(const std::optional<T>& o) noexcept {
    return 1 + (o ? codec<T>::encoded_size(*o) : 0);
  }
  static std::byte* encode(const std::optional<T>& o, std::byte* out) noexcept {
    out = codec<bool>::encode(o.has_value(), out);
    return o ? codec<T>::encode(*o, out) : out;
  }
  static std::optional<T> decode(decoder& in) {
    if (!codec<bool>::decode(in)) return std::nullopt;
    return codec<T>::decode(in);
  }
};

namespace detail {

// Shared by the associative containers: varint count, then key/value pairs.
template <class Map>
struct map_codec {
  using key = typename Map::key_type;
  using mapped = typename Map::mapped_type;
  static std::size_t encoded_size(const Map& m) noexcept {
    std::size_t n = varint_size(m.size());
    for (const auto& [k, v] : m) n += codec<key>::encoded_size(k) + codec<mapped>::encoded_size(v);
    return n;
  }
  static std::byte* encode(const Map& m, std::byte* out) noexcept {
    out = put_varint(m.size(), out);
    for (const auto& [k, v] : m) out = codec<mapped>::encode(v, codec<key>::encode(k, out));
    return out;
  }
  static Map decode(decoder& in) {
    const std::size_t n = in.take_count();
    Map m;
    for (std::size_t i = 0; i < n; ++i) {
      key k = codec<key>::decode(in);
      mapped v = codec<mapped>::decode(in);
      if (!m.emplace(std::move(k), std::move(v)).second) throw codec_error("codec: duplicate key in map");
    }
    return m;
  }
};

}  // namespace detail

template <encodable K, encodable V, class Compare, class Alloc>
struct codec<std::map<K, V, Compare, Alloc>> : detail::map_codec<std::map<K, V, Compare, Alloc>> {};

template <encodable K, encodable V, class Hash, class Eq, class Alloc>
struct codec<std::unordered_map<K, V, Hash, Eq, Alloc>>
    : detail::map_codec<std::unordered_map<K, V, Hash, Eq, Alloc>> {};

// Convenience: encodes one value into a fresh byte vector.
template <encodable T>
std::vector<std::byte> encode_to_bytes(const T& value) {
  std::vector<std::byte> bytes(codec<T>::encoded_size(value));
  if (std::byte* out = bytes.data()) codec<T>::encode(value, out);
  return bytes;
}

// Convenience: decodes exactly one value that must use all of `bytes`.
template <encodable T>
T decode_from_bytes(std::span<const std::byte> bytes) {
  decoder in(bytes);
  T value = codec<T>::decode(in);
  if (!in.empty())
    throw codec_error("codec: " + std::to_string(in.remaining()) + " trailing bytes after the value");
  return value;
}

}  // namespace procflow
