// The item types the codec fuzzer decodes (codec_fuzz.cpp) and the seed generator encodes
// (corpus_gen.cpp): every built-in codec family, nested, plus PROCFLOW_CODEC structs (field by
// field and raw) and zero-byte items. std::variant has no built-in codec, so it is not here.
#pragma once

#include <procflow/codec.hpp>

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

namespace procflow_fuzz {

enum class Level : std::uint16_t { low, high };  // raw: every 16-bit pattern is a valid value
enum class Toggle : bool { off, on };             // checked like bool

// Field by field: strings, nested containers, a C array, enums, a bool, a map.
struct Trip {
  std::string origin;
  std::int32_t delay = 0;
  double miles = 0;
  std::vector<std::optional<std::string>> tags;
  char code[4] = {};
  Level level = Level::low;
  Toggle toggle = Toggle::off;
  bool flag = false;
  std::map<std::string, std::uint32_t> counts;
};
PROCFLOW_CODEC(Trip, origin, delay, miles, tags, code, level, toggle, flag, counts);

// Raw: trivially copyable, no padding, every field raw (batches are copied in bulk).
struct Point {
  std::int32_t x = 0;
  float y = 0;
};
PROCFLOW_CODEC(Point, x, y);

// Encodes to zero bytes.
struct Empty {};
PROCFLOW_CODEC(Empty);

using Types = std::tuple<
    std::string,                                                  // 0
    std::vector<std::uint32_t>,                                   // 1 raw elements, one memcpy
    std::vector<std::string>,                                     // 2
    std::optional<std::string>,                                   // 3
    std::pair<std::int64_t, std::string>,                         // 4
    std::tuple<bool, std::uint8_t, std::string, double>,          // 5
    std::map<std::string, std::vector<std::int32_t>>,             // 6
    std::unordered_map<std::uint64_t, std::optional<bool>>,       // 7
    Trip,                                                         // 8
    Point,                                                        // 9 raw struct
    std::uint64_t,                                                // 10 raw scalar
    std::array<std::string, 3>,                                   // 11
    std::array<std::uint16_t, 5>,                                 // 12 raw array
    std::vector<std::vector<std::vector<std::uint8_t>>>,          // 13
    std::vector<std::tuple<>>,                                    // 14 zero-byte elements
    std::map<double, std::int32_t>,                               // 15 NaN keys
    Level,                                                        // 16
    Toggle,                                                       // 17
    std::vector<Empty>,                                           // 18
    std::vector<bool>,                                            // 19
    std::tuple<>,                                                 // 20 zero-byte item
    std::unordered_map<std::string, std::string>,                 // 21
    std::vector<Trip>,                                            // 22
    std::optional<std::optional<std::vector<Point>>>>;            // 23

inline constexpr std::size_t type_count = std::tuple_size_v<Types>;

// Unordered maps encode in iteration order, which may differ between two equal maps: their
// re-encoding is compared by size only.
template <class T>
inline constexpr bool order_stable_v = true;
template <>
inline constexpr bool order_stable_v<std::unordered_map<std::uint64_t, std::optional<bool>>> = false;
template <>
inline constexpr bool order_stable_v<std::unordered_map<std::string, std::string>> = false;

// Calls f.template operator()<T>() for the index-th type of Types.
template <class F, std::size_t... I>
void with_type_impl(std::size_t index, F&& f, std::index_sequence<I...>) {
  ((index == I ? (f.template operator()<std::tuple_element_t<I, Types>>(), 0) : 0), ...);
}
template <class F>
void with_type(std::size_t index, F&& f) {
  with_type_impl(index, f, std::make_index_sequence<type_count>{});
}

// Input layout shared by the fuzzer and the seed generator:
//   byte 0: type index (mod type_count); bytes 1-2: item count, little-endian; then the items.
inline constexpr std::size_t codec_input_header = 3;

}  // namespace procflow_fuzz
