// procflow::codec<T>: how an item is turned into bytes to cross a process boundary, and back.
//
// A codec is a struct with three static functions:
//
//   static std::size_t encoded_size(const T&) noexcept;          // exact byte count (may be 0)
//   static std::byte*  encode(const T&, std::byte* out) noexcept; // writes it, returns the end
//   static T           decode(procflow::decoder& in);            // throws codec_error if bad
//
// Built in:
//   * raw bytes (raw_codec<T>, batches copied in bulk) for the types whose every bit pattern is a
//     valid value and that point nowhere: arithmetic types except bool, enums with a fixed
//     underlying type (enum class E, enum E : int), std::array of them;
//   * checked: bool and enums over bool (a byte other than 0/1 is refused), std::string,
//     std::vector, std::array, std::pair, std::tuple, std::optional, std::map,
//     std::unordered_map, and any nesting of those.
// Refused at compile time: pointers, member pointers, std::string_view, std::span (and anything
// holding one, e.g. std::optional<const char*>): an address means nothing in another process, so
// send the owned data (std::string, std::vector). Also enums without a fixed underlying type
// (enum E { a, b }): a byte pattern outside their range would be undefined behaviour once loaded.
// A user's struct has no codec until it opts in.
//
// A plain struct opts in with one line after it, in its own namespace:
//
//   struct Trip { std::string origin; std::int32_t delay; double miles; };
//   PROCFLOW_CODEC(Trip, origin, delay, miles);
//
// It lists every field (a forgotten or repeated one is a compile error), in the order they travel;
// each must itself be encodable (a C array of encodable elements works too), so a pointer field
// fails to compile with a message naming the remedy. The derived codec goes field by field with the
// built-ins' bounds checks and no allocation in encoded_size; when every field is raw and the
// struct is trivially copyable without padding (sum of field sizes == sizeof), it *is* the raw
// codec and batches are copied in bulk. The struct must be default constructible (decode fills a
// T{} field by field).
//
// Or write codec<MyType> yourself (see tests/codec/codec_test.cpp): a user's codec always wins,
// on every path; it is treated as raw only if it derives from raw_codec<MyType>.
// It may declare `static constexpr std::size_t min_encoded_size` (the fewest bytes a value
// encodes to), which lets containers of it refuse a corrupt count early; without it procflow
// assumes a value may encode to nothing.
// Decoding never reads past its input: every length is checked against the bytes left.
#pragma once

#include <procflow/detail/prefault.hpp>
#include <procflow/error.hpp>

#include <algorithm>
#include <array>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
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

  // Most elements a container of zero-byte elements (empty structs, std::tuple<>) may claim
  // beyond the bytes left: their count cannot be checked against the input, so it is bounded.
  static constexpr std::size_t max_zero_byte_elements = std::size_t{1} << 20;

  // Reads an element count and checks it is plausible: each element encodes to at least
  // `min_element_bytes` (codec<T>::min_encoded_size, see min_encoded_size_v), so a count whose
  // elements cannot fit in the bytes left is corrupt (and must not drive an allocation). When
  // elements may encode to nothing (min_element_bytes 0), the count is bounded by the bytes left
  // or max_zero_byte_elements, whichever is larger.
  std::size_t take_count(std::size_t min_element_bytes = 1) {
    const std::uint64_t n = take_varint();
    if (min_element_bytes > 0) {
      if (n > remaining() / min_element_bytes)
        throw codec_error("codec: element count " + std::to_string(n) + " (at least " +
                          std::to_string(min_element_bytes) + " bytes each) exceeds the " +
                          std::to_string(remaining()) + " bytes left");
    } else if (n > remaining() && n > max_zero_byte_elements) {
      throw codec_error("codec: element count " + std::to_string(n) + " of possibly zero-byte elements exceeds the " +
                        std::to_string(remaining()) + " bytes left and the limit of " +
                        std::to_string(max_zero_byte_elements));
    }
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

// The raw codec: a value travels as its object representation, sizeof(T) bytes. Correct only for
// a trivially copyable T whose every bit pattern is a valid value and that points nowhere; procflow
// uses it for arithmetic types (not bool), enums, std::array of raw types, and PROCFLOW_CODEC
// structs whose fields are all raw and that have no padding. A codec<T> deriving from
// raw_codec<T> tells procflow that batches of T may be copied in bulk (is_raw_codec_v).
template <class T>
struct raw_codec {
  static constexpr std::size_t min_encoded_size = sizeof(T);
  static constexpr std::size_t encoded_size(const T&) noexcept { return sizeof(T); }
  static std::byte* encode(const T& value, std::byte* out) noexcept {
    static_assert(std::is_trivially_copyable_v<T>, "procflow::raw_codec<T> needs a trivially copyable T");
    std::memcpy(out, &value, sizeof(T));
    return out + sizeof(T);
  }
  static T decode(decoder& in) {
    static_assert(std::is_trivially_copyable_v<T> && std::is_default_constructible_v<T>,
                  "procflow::raw_codec<T> needs a trivially copyable, default constructible T");
    T value;
    std::memcpy(&value, in.take(sizeof(T)), sizeof(T));
    return value;
  }
};

// True when the codec in force for T *is* the raw codec (codec<T> derives from raw_codec<T>):
// every value then encodes to exactly sizeof(T) bytes equal to its object representation, so a
// batch of T is a plain array and can be copied in bulk. A user's own codec<T> is never raw
// unless it says so by deriving from raw_codec<T>.
template <class T>
inline constexpr bool is_raw_codec_v = false;
template <encodable T>
inline constexpr bool is_raw_codec_v<T> = std::is_base_of_v<raw_codec<T>, codec<T>>;

// The fewest bytes any value of T encodes to: codec<T>::min_encoded_size when the codec declares
// it (every built-in does), else 0 (a user's codec may encode a value to nothing). Containers use
// it to check an element count against the bytes left (decoder::take_count).
template <class T>
constexpr std::size_t min_encoded_size_of() noexcept {
  if constexpr (requires { std::size_t{codec<T>::min_encoded_size}; }) {
    return codec<T>::min_encoded_size;
  } else {
    return 0;
  }
}
template <class T>
inline constexpr std::size_t min_encoded_size_v = min_encoded_size_of<T>();

namespace detail {

// An enum with a fixed underlying type (enum class E, enum E : int): every value of that type is a
// valid value of the enum. Without one (enum E { a, b }) only the values of the smallest bit-field
// holding the enumerators are, and loading any other value is undefined behaviour, so such an
// enum cannot be decoded from untrusted bytes: procflow refuses it (see item_type_check).
// (List-initialising an enum from its underlying type compiles only when that type is fixed.)
template <class T>
concept fixed_enum = std::is_enum_v<T> && requires { T{std::underlying_type_t<T>{}}; };

// Types whose every bit pattern is a valid value and that point nowhere: arithmetic types except
// bool (only 0 and 1 are valid bools) and enums with a fixed underlying type other than bool.
template <class T, bool = std::is_enum_v<T>>
struct is_raw_scalar : std::bool_constant<std::is_arithmetic_v<T> && !std::is_same_v<std::remove_cv_t<T>, bool>> {};
template <class T>
struct is_raw_scalar<T, true>
    : std::bool_constant<fixed_enum<T> && !std::is_same_v<std::underlying_type_t<T>, bool>> {};

// Types that are or hold an enum without a fixed underlying type (refused, see fixed_enum).
template <class T>
struct holds_unfixed_enum : std::bool_constant<std::is_enum_v<T> && !fixed_enum<T>> {};
template <class T, std::size_t N>
struct holds_unfixed_enum<std::array<T, N>> : holds_unfixed_enum<T> {};
template <class T, std::size_t N>
struct holds_unfixed_enum<T[N]> : holds_unfixed_enum<T> {};
template <template <class...> class Template, class... Ts>
struct holds_unfixed_enum<Template<Ts...>> : std::disjunction<holds_unfixed_enum<Ts>...> {};
template <class T>
inline constexpr bool holds_unfixed_enum_v = holds_unfixed_enum<std::remove_cv_t<T>>::value;

// Types that point or view into the memory of the process that made them. Their address means
// nothing in another process, so procflow refuses them (unless a user codec says otherwise).
template <class T>
struct holds_address : std::false_type {};
template <class T>
struct holds_address<T*> : std::true_type {};
template <class T, class C>
struct holds_address<T C::*> : std::true_type {};
template <class C, class Traits>
struct holds_address<std::basic_string_view<C, Traits>> : std::true_type {};
template <class T, std::size_t Extent>
struct holds_address<std::span<T, Extent>> : std::true_type {};
template <class T>
struct holds_address<std::reference_wrapper<T>> : std::true_type {};
template <class T, std::size_t N>
struct holds_address<std::array<T, N>> : holds_address<T> {};
template <class T, std::size_t N>
struct holds_address<T[N]> : holds_address<T> {};
template <template <class...> class Template, class... Ts>
struct holds_address<Template<Ts...>> : std::disjunction<holds_address<Ts>...> {};
template <class T>
inline constexpr bool holds_address_v = holds_address<std::remove_cv_t<T>>::value;

// What procflow refuses: every function deleted, so `encodable` is false (and a stage using the
// type fails with the message of checked_encodable_v below).
template <class T>
struct refused_codec {
  static std::size_t encoded_size(const T&) noexcept = delete;   // points into this process:
  static std::byte* encode(const T&, std::byte*) noexcept = delete;  // send the owned data
  static T decode(decoder&) = delete;                             // (std::string, std::vector)
};

// Instantiated for every item type of a pipeline: a type procflow cannot send fails to compile
// here, with a message that says why and what to do.
template <class T>
struct item_type_check {
  static_assert(encodable<T> || !holds_address_v<T>,
                "procflow: this item type is or holds a pointer or a view (T*, std::string_view, std::span, "
                "std::reference_wrapper): the address means nothing in another process. Send the owned data "
                "instead (std::string, std::vector, a struct of values), or specialize procflow::codec<T>");
  static_assert(encodable<T> || holds_address_v<T> || !holds_unfixed_enum_v<T>,
                "procflow: this item type is or holds an enum without a fixed underlying type (enum E { a, b }): "
                "a value outside its enumerators' range is undefined behaviour, so it cannot be decoded from "
                "another process's bytes. Give it one: enum E : int { a, b } (or enum class E)");
  static_assert(encodable<T> || holds_address_v<T> || holds_unfixed_enum_v<T>,
                "procflow: this item type has no procflow::codec<T>. For a plain struct add "
                "PROCFLOW_CODEC(Type, field1, field2, ...) after it, in its namespace; or specialize "
                "procflow::codec<Type> (see procflow/codec.hpp)");
  static constexpr bool value = encodable<T>;
};
template <class T>
inline constexpr bool checked_encodable_v = item_type_check<T>::value;

}  // namespace detail

// Numbers and enums travel as raw bytes.
template <class T>
  requires detail::is_raw_scalar<T>::value
struct codec<T> : raw_codec<T> {};

// bool is checked on decode: any byte other than 0 or 1 is corrupt (and would be UB as a bool).
template <>
struct codec<bool> {
  static constexpr std::size_t min_encoded_size = 1;
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

// An enum without a fixed underlying type is refused (see detail::fixed_enum).
template <class T>
  requires(std::is_enum_v<T> && !detail::fixed_enum<T>)
struct codec<T> : detail::refused_codec<T> {};

// An enum over bool is checked like bool.
template <class T>
  requires(detail::fixed_enum<T> && std::is_same_v<std::underlying_type_t<T>, bool>)
struct codec<T> {
  static constexpr std::size_t min_encoded_size = 1;
  static constexpr std::size_t encoded_size(T) noexcept { return 1; }
  static std::byte* encode(T value, std::byte* out) noexcept { return codec<bool>::encode(static_cast<bool>(value), out); }
  static T decode(decoder& in) { return static_cast<T>(codec<bool>::decode(in)); }
};

// Pointers and views are refused (see detail::refused_codec).
template <class T>
struct codec<T*> : detail::refused_codec<T*> {};
template <class T, class C>
struct codec<T C::*> : detail::refused_codec<T C::*> {};
template <class C, class Traits>
struct codec<std::basic_string_view<C, Traits>> : detail::refused_codec<std::basic_string_view<C, Traits>> {};
template <class T, std::size_t Extent>
struct codec<std::span<T, Extent>> : detail::refused_codec<std::span<T, Extent>> {};

namespace detail {
// A std::string's encoding, from any characters (a view of them encodes as the string would).
inline std::size_t chars_encoded_size(std::size_t n) noexcept { return varint_size(n) + n; }
inline std::byte* encode_chars(std::string_view s, std::byte* out) noexcept {
  out = put_varint(s.size(), out);
  if (!s.empty()) std::memcpy(out, s.data(), s.size());
  return out + s.size();
}
}  // namespace detail

// std::string: varint length, then the bytes.
template <class Traits, class Alloc>
struct codec<std::basic_string<char, Traits, Alloc>> {
  using string = std::basic_string<char, Traits, Alloc>;
  static constexpr std::size_t min_encoded_size = 1;  // the length
  static std::size_t encoded_size(const string& s) noexcept { return detail::chars_encoded_size(s.size()); }
  static std::byte* encode(const string& s, std::byte* out) noexcept { return detail::encode_chars(std::string_view(s.data(), s.size()), out); }
  static string decode(decoder& in) {
    const std::size_t n = in.take_count();
    const std::byte* p = in.take(n);
    return string(reinterpret_cast<const char*>(p), n);
  }
  // The encoding as a head (the length) and the string's own bytes: an item larger than a slot
  // is copied from the string straight into the channel's slots (detail::encode_large).
  static std::byte* encode_head(const string& s, std::byte* out) noexcept { return detail::put_varint(s.size(), out); }
  static std::span<const std::byte> body(const string& s) noexcept { return std::as_bytes(std::span(s.data(), s.size())); }
  // A large item read from the slots straight into the string: its body for a length of `n`
  // (in body_unit bytes), reusing the string's memory.
  static constexpr std::size_t body_unit = 1;
  static std::span<std::byte> resize_body(string& s, std::size_t n) {
    detail::reserve_mapped(s, n);
    s.resize(n);
    return std::as_writable_bytes(std::span(s.data(), s.size()));
  }
  // decode() into an existing string, reusing its capacity (detail::decode_items).
  static void decode_into(decoder& in, string& s) {
    const std::size_t n = in.take_count();
    s.assign(reinterpret_cast<const char*>(in.take(n)), n);
  }
};

// std::vector: varint count, then the elements (one memcpy when they are raw).
template <encodable T, class Alloc>
struct codec<std::vector<T, Alloc>> {
  using vector = std::vector<T, Alloc>;
  static constexpr std::size_t min_encoded_size = 1;  // the count
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
    const std::size_t n = in.take_count(min_encoded_size_v<T>);
    vector v;
    if constexpr (is_raw_codec_v<T>) {
      v.resize(n);  // take_count checked n * sizeof(T) against the bytes left
      if (n) std::memcpy(v.data(), in.take(n * sizeof(T)), n * sizeof(T));
    } else {
      // Zero-byte elements: the count may exceed the bytes; grow as they decode instead.
      v.reserve(std::min(n, in.remaining()));
      for (std::size_t i = 0; i < n; ++i) v.push_back(codec<T>::decode(in));
    }
    return v;
  }
  // Raw elements: the encoding as a head (the count) and the vector's own bytes (see the string
  // codec), and decoding into an existing vector, reusing its capacity.
  static std::byte* encode_head(const vector& v, std::byte* out) noexcept
    requires is_raw_codec_v<T>
  {
    return detail::put_varint(v.size(), out);
  }
  static std::span<const std::byte> body(const vector& v) noexcept
    requires is_raw_codec_v<T>
  {
    return std::as_bytes(std::span(v.data(), v.size()));
  }
  static constexpr std::size_t body_unit = sizeof(T);
  static std::span<std::byte> resize_body(vector& v, std::size_t n)
    requires is_raw_codec_v<T>
  {
    detail::reserve_mapped(v, n);
    v.resize(n);
    return std::as_writable_bytes(std::span(v.data(), v.size()));
  }
  static void decode_into(decoder& in, vector& v)
    requires is_raw_codec_v<T>
  {
    const std::size_t n = in.take_count(min_encoded_size_v<T>);
    v.resize(n);  // take_count checked n * sizeof(T) against the bytes left
    if (n) std::memcpy(v.data(), in.take(n * sizeof(T)), n * sizeof(T));
  }
};

template <encodable A, encodable B>
struct codec<std::pair<A, B>> {
  static constexpr std::size_t min_encoded_size = min_encoded_size_v<A> + min_encoded_size_v<B>;
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
struct codec<std::tuple<Ts...>> {
  static constexpr std::size_t min_encoded_size = (std::size_t{0} + ... + min_encoded_size_v<Ts>);
  static std::size_t encoded_size(const std::tuple<Ts...>& t) noexcept {
    return std::apply([](const Ts&... e) { return (std::size_t{0} + ... + codec<Ts>::encoded_size(e)); }, t);
  }
  static std::byte* encode(const std::tuple<Ts...>& t, std::byte* out) noexcept {
    std::apply([&]([[maybe_unused]] const Ts&... e) { ((out = codec<Ts>::encode(e, out)), ...); }, t);
    return out;
  }
  static std::tuple<Ts...> decode([[maybe_unused]] decoder& in) {
    // Braced initialisation evaluates left to right, so the elements are read in order.
    return std::tuple<Ts...>{codec<Ts>::decode(in)...};
  }
};

template <encodable T>
struct codec<std::optional<T>> {
  static constexpr std::size_t min_encoded_size = 1;  // the flag
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

// std::array of non-raw elements (or with padding): its N elements back to back, no count.
template <class T, std::size_t N>
struct array_codec {
  using array = std::array<T, N>;
  static constexpr std::size_t min_encoded_size = N * min_encoded_size_v<T>;
  static std::size_t encoded_size(const array& a) noexcept {
    std::size_t n = 0;
    for (const auto& e : a) n += codec<T>::encoded_size(e);
    return n;
  }
  static std::byte* encode(const array& a, std::byte* out) noexcept {
    for (const auto& e : a) out = codec<T>::encode(e, out);
    return out;
  }
  static array decode(decoder& in) {
    array a{};
    for (auto& e : a) e = codec<T>::decode(in);
    return a;
  }
};

}  // namespace detail

// std::array: raw when its elements are raw (one memcpy), element by element otherwise.
template <encodable T, std::size_t N>
struct codec<std::array<T, N>>
    : std::conditional_t<(N > 0 && is_raw_codec_v<T> && sizeof(std::array<T, N>) == N * sizeof(T)),
                         raw_codec<std::array<T, N>>, detail::array_codec<T, N>> {};

namespace detail {

// Shared by the associative containers: varint count, then key/value pairs.
template <class Map>
struct map_codec {
  using key = typename Map::key_type;
  using mapped = typename Map::mapped_type;
  static constexpr std::size_t min_encoded_size = 1;  // the count
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
    const std::size_t n = in.take_count(min_encoded_size_v<key> + min_encoded_size_v<mapped>);
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

// ------------------------------------------------------------------ PROCFLOW_CODEC

namespace detail {

template <class T>
struct record_tag {};
template <class T, auto... Members>
struct record_fields;

// Found by argument-dependent lookup in the namespace of the struct: PROCFLOW_CODEC declares it.
template <class T>
void procflow_record_fields(T) = delete;

template <class T>
concept has_record_fields = requires { procflow_record_fields(record_tag<T>{}); };

template <class T, auto Member>
using member_t = std::remove_cvref_t<decltype(std::declval<T&>().*Member)>;

// A field may also be a C array (char name[16]): its elements back to back.
template <class F>
inline constexpr bool field_encodable_v = encodable<F>;
template <class E, std::size_t N>
inline constexpr bool field_encodable_v<E[N]> = field_encodable_v<E>;
template <class F>
inline constexpr bool field_raw_v = is_raw_codec_v<F>;
template <class E, std::size_t N>
inline constexpr bool field_raw_v<E[N]> = field_raw_v<E>;

template <class F>
inline constexpr std::size_t field_min_size_v = min_encoded_size_v<F>;
template <class E, std::size_t N>
inline constexpr std::size_t field_min_size_v<E[N]> = N * field_min_size_v<E>;

template <class F>
constexpr std::size_t field_size(const F& field) noexcept {
  if constexpr (std::is_array_v<F>) {
    if constexpr (field_raw_v<F>) {
      return sizeof(F);
    } else {
      std::size_t n = 0;
      for (const auto& e : field) n += field_size(e);
      return n;
    }
  } else {
    return codec<F>::encoded_size(field);
  }
}

template <class F>
std::byte* field_encode(const F& field, std::byte* out) noexcept {
  if constexpr (std::is_array_v<F>) {
    for (const auto& e : field) out = field_encode(e, out);
    return out;
  } else {
    return codec<F>::encode(field, out);
  }
}

template <class F>
void field_decode(F& field, decoder& in) {
  if constexpr (std::is_array_v<F>) {
    for (auto& e : field) field_decode(e, in);
  } else {
    field = codec<F>::decode(in);
  }
}

template <auto A, auto B>
constexpr bool same_member() noexcept {
  if constexpr (std::is_same_v<decltype(A), decltype(B)>) {
    return A == B;
  } else {
    return false;
  }
}
template <auto M, auto... Ms>
inline constexpr std::size_t occurrences = (std::size_t{0} + ... + std::size_t{same_member<M, Ms>()});

// The checked field list of a struct, as PROCFLOW_CODEC(T, fields...) names it.
template <class T, auto... Members>
struct record_fields {
  static constexpr bool check() {
    static_assert((std::is_member_object_pointer_v<decltype(Members)> && ...),
                  "procflow: PROCFLOW_CODEC: every name listed must be a data member of the struct");
    static_assert(((field_encodable_v<member_t<T, Members>> || !holds_address_v<member_t<T, Members>>) && ...),
                  "procflow: PROCFLOW_CODEC: a field is or holds a pointer or a view (T*, std::string_view, "
                  "std::span): the address means nothing in another process. Store the owned data instead "
                  "(std::string, std::vector, values)");
    static_assert(((field_encodable_v<member_t<T, Members>> || !holds_unfixed_enum_v<member_t<T, Members>>) && ...),
                  "procflow: PROCFLOW_CODEC: a field is or holds an enum without a fixed underlying type "
                  "(enum E { a, b }), which cannot be decoded safely. Give it one: enum E : int { a, b }");
    static_assert(((field_encodable_v<member_t<T, Members>> || holds_address_v<member_t<T, Members>> ||
                    holds_unfixed_enum_v<member_t<T, Members>>) && ...),
                  "procflow: PROCFLOW_CODEC: every field needs a procflow::codec (numbers, enums, std::string, "
                  "std::vector, std::optional, ..., or a struct with PROCFLOW_CODEC of its own)");
    static_assert(((occurrences<Members, Members...> == 1) && ...), "procflow: PROCFLOW_CODEC lists a field twice");
    static_assert(sizeof...(Members) > 0 || std::is_empty_v<T>,
                  "procflow: PROCFLOW_CODEC(Type) without fields is only for an empty struct");
    static_assert(std::is_default_constructible_v<T>,
                  "procflow: PROCFLOW_CODEC needs a default constructible struct (decode fills a T{} field by field)");
    return true;
  }

  // Raw (bulk-copied) when the struct is exactly its fields, each raw: trivially copyable, no
  // padding (sum of the field sizes == sizeof(T)), nothing that can hold an invalid bit pattern.
  static constexpr bool raw = sizeof...(Members) > 0 && std::is_trivially_copyable_v<T> &&
                              (field_raw_v<member_t<T, Members>> && ...) &&
                              (std::size_t{0} + ... + sizeof(member_t<T, Members>)) == sizeof(T);

  struct fieldwise {
    static constexpr std::size_t min_encoded_size = (std::size_t{0} + ... + field_min_size_v<member_t<T, Members>>);
    static constexpr std::size_t encoded_size([[maybe_unused]] const T& value) noexcept {
      return (std::size_t{0} + ... + field_size(value.*Members));
    }
    static std::byte* encode([[maybe_unused]] const T& value, std::byte* out) noexcept {
      ((out = field_encode(value.*Members, out)), ...);
      return out;
    }
    static T decode([[maybe_unused]] decoder& in) {
      T value{};
      (field_decode(value.*Members, in), ...);  // comma fold: fields in the order listed
      return value;
    }
  };
  using codec_base = std::conditional_t<raw, raw_codec<T>, fieldwise>;
};

template <class T>
using record_fields_of = decltype(procflow_record_fields(record_tag<T>{}));

template <class T>
constexpr bool record_check() {
  return record_fields_of<T>::check();
}

}  // namespace detail

// A struct opted in with PROCFLOW_CODEC: field by field, or raw when that is exactly the same.
template <class T>
  requires detail::has_record_fields<T>
struct codec<T> : detail::record_fields_of<T>::codec_base {};

}  // namespace procflow

// PROCFLOW_CODEC(Type, field1, field2, ...): the codec of a plain struct, derived from its fields.
// Place it after the struct, at namespace scope in the struct's own namespace; list every field
// (a forgotten one is a compile error), in the order they should travel. See the header comment.
#define PROCFLOW_CODEC(Type, ...)                                                                        \
  [[maybe_unused]] constexpr ::procflow::detail::record_fields<Type PROCFLOW_DETAIL_FOR_EACH(            \
      PROCFLOW_DETAIL_MEMBER_POINTER, Type __VA_OPT__(, ) __VA_ARGS__)>                                  \
  procflow_record_fields(::procflow::detail::record_tag<Type>) noexcept {                                \
    return {};                                                                                           \
  }                                                                                                      \
  __VA_OPT__([[maybe_unused]] inline void procflow_record_arity(const Type& procflow_record) {           \
    /* every field listed: a struct with more fields than names does not decompose */                   \
    [[maybe_unused]] const auto& [__VA_ARGS__] = procflow_record;                                        \
  })                                                                                                     \
  static_assert(::procflow::detail::record_check<Type>(), "procflow: PROCFLOW_CODEC(" #Type ", ...)")

// Preprocessor iteration (C++20 __VA_OPT__): MACRO(Type, name) for every name.
#define PROCFLOW_DETAIL_MEMBER_POINTER(Type, name) , &Type::name
#define PROCFLOW_DETAIL_PARENS ()
#define PROCFLOW_DETAIL_EXPAND(...) PROCFLOW_DETAIL_EXPAND3(PROCFLOW_DETAIL_EXPAND3(PROCFLOW_DETAIL_EXPAND3(__VA_ARGS__)))
#define PROCFLOW_DETAIL_EXPAND3(...) PROCFLOW_DETAIL_EXPAND2(PROCFLOW_DETAIL_EXPAND2(PROCFLOW_DETAIL_EXPAND2(__VA_ARGS__)))
#define PROCFLOW_DETAIL_EXPAND2(...) PROCFLOW_DETAIL_EXPAND1(PROCFLOW_DETAIL_EXPAND1(PROCFLOW_DETAIL_EXPAND1(__VA_ARGS__)))
#define PROCFLOW_DETAIL_EXPAND1(...) __VA_ARGS__
#define PROCFLOW_DETAIL_FOR_EACH(macro, Type, ...) \
  __VA_OPT__(PROCFLOW_DETAIL_EXPAND(PROCFLOW_DETAIL_FOR_EACH_STEP(macro, Type, __VA_ARGS__)))
#define PROCFLOW_DETAIL_FOR_EACH_STEP(macro, Type, name, ...) \
  macro(Type, name) __VA_OPT__(PROCFLOW_DETAIL_FOR_EACH_AGAIN PROCFLOW_DETAIL_PARENS(macro, Type, __VA_ARGS__))
#define PROCFLOW_DETAIL_FOR_EACH_AGAIN() PROCFLOW_DETAIL_FOR_EACH_STEP

namespace procflow {

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
