// Checks include/procflow/codec.hpp: every built-in codec round-trips, user specializations plug
// in, types without a codec are rejected at compile time, and no malformed input (truncated at any
// length, corrupt counts, bad bool bytes, trailing bytes) decodes or reads out of bounds.
#include <procflow/codec.hpp>

#include <doctest/doctest.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string_view>
#include <map>
#include <new>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

// ------------------------------------------------------------------------------------------------
// Largest single allocation seen, so a corrupt count can be shown not to drive a huge allocation.
namespace {
std::atomic<std::size_t> largest_allocation{0};
}  // namespace

[[gnu::noinline]] void* operator new(std::size_t n) {
  std::size_t seen = largest_allocation.load(std::memory_order_relaxed);
  while (n > seen && !largest_allocation.compare_exchange_weak(seen, n, std::memory_order_relaxed)) {
  }
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
// Out of line, so GCC does not pair the inlined free() with a new-expression and warn.
[[gnu::noinline]] void operator delete(void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept { std::free(p); }

// ------------------------------------------------------------------------------------------------
// A user type with its own codec, which also counts live instances (the lifecycle-counting type).
namespace {

struct Tracked {
  static inline int live = 0;
  std::int32_t id = 0;
  std::string name;

  Tracked() { ++live; }
  Tracked(std::int32_t i, std::string n) : id(i), name(std::move(n)) { ++live; }
  Tracked(const Tracked& o) : id(o.id), name(o.name) { ++live; }
  Tracked(Tracked&& o) noexcept : id(o.id), name(std::move(o.name)) { ++live; }
  Tracked& operator=(const Tracked&) = default;
  Tracked& operator=(Tracked&&) noexcept = default;
  ~Tracked() { --live; }
  friend bool operator==(const Tracked& a, const Tracked& b) { return a.id == b.id && a.name == b.name; }
};

// A plain struct of numbers opts in with one line. It has padding (after `a` and after `c`), so
// its derived codec goes field by field: 4 + 8 + 5 bytes, the padding never travels.
struct Pod {
  std::int32_t a;
  double b;
  char c[5];
  friend bool operator==(const Pod& x, const Pod& y) {
    return x.a == y.a && x.b == y.b && std::string(x.c, 5) == std::string(y.c, 5);
  }
};
PROCFLOW_CODEC(Pod, a, b, c);

// Not trivially copyable and no codec: must not be encodable.
struct NoCodec {
  std::string s;
};

// Trivially copyable structs without an opt-in: no codec (a bool or a pointer inside would make a
// raw copy unsound, and procflow cannot see inside a struct without being told its fields).
struct BoolInt {
  bool b;
  std::int32_t i;
};
struct HoldsPointer {
  const char* p;
};
struct PlainNumbers {
  std::int32_t a;
  std::int32_t b;
};

// The same shapes opted in.
struct CheckedBoolInt {
  bool b;
  std::int32_t i;
  friend bool operator==(const CheckedBoolInt&, const CheckedBoolInt&) = default;
};
PROCFLOW_CODEC(CheckedBoolInt, b, i);

struct Point {  // no padding, all raw: the derived codec is the raw codec
  std::int32_t x;
  std::int32_t y;
  float z[2];
  friend bool operator==(const Point&, const Point&) = default;
};
PROCFLOW_CODEC(Point, x, y, z);

enum class Color : std::uint8_t { red, green, blue };
enum class Flag : bool { off, on };

// A record with a string, nested containers, an enum, an optional, a C array of strings, and
// another record; listed in an order other than declaration order.
struct Trip {
  std::string origin;
  std::int32_t delay = 0;
  std::optional<double> miles;
  Color color = Color::red;
  std::vector<Point> stops;
  std::string tags[2];
  CheckedBoolInt extra{};
  friend bool operator==(const Trip&, const Trip&) = default;
};
PROCFLOW_CODEC(Trip, delay, origin, miles, color, stops, tags, extra);

struct Empty {};
PROCFLOW_CODEC(Empty);

// A user's codec for a trivially copyable type that transforms it (stores the value negated): it
// must be used everywhere, including inside containers whose raw path would bypass it.
struct Celsius {
  std::int32_t degrees;
};

}  // namespace

template <>
struct procflow::codec<Celsius> {
  static std::size_t encoded_size(const Celsius&) noexcept { return 4; }
  static std::byte* encode(const Celsius& c, std::byte* out) noexcept { return codec<std::int32_t>::encode(-c.degrees, out); }
  static Celsius decode(procflow::decoder& in) { return {-codec<std::int32_t>::decode(in)}; }
};

namespace {

}  // namespace

template <>
struct procflow::codec<Tracked> {
  static std::size_t encoded_size(const Tracked& t) noexcept {
    return codec<std::int32_t>::encoded_size(t.id) + codec<std::string>::encoded_size(t.name);
  }
  static std::byte* encode(const Tracked& t, std::byte* out) noexcept {
    return codec<std::string>::encode(t.name, codec<std::int32_t>::encode(t.id, out));
  }
  static Tracked decode(procflow::decoder& in) {
    const auto id = codec<std::int32_t>::decode(in);
    return Tracked(id, codec<std::string>::decode(in));
  }
};

namespace {

using procflow::codec_error;
using procflow::decode_from_bytes;
using procflow::encodable;
using procflow::encode_to_bytes;

static_assert(encodable<int> && encodable<double> && encodable<Pod> && encodable<bool>);
static_assert(encodable<std::string> && encodable<std::vector<std::string>>);
static_assert(encodable<std::map<std::string, std::vector<std::pair<int, std::string>>>>);
static_assert(encodable<std::tuple<int, std::string, std::optional<double>>>);
static_assert(encodable<Tracked> && encodable<std::vector<Tracked>>);
static_assert(!encodable<NoCodec>);
static_assert(!encodable<std::vector<NoCodec>>);
static_assert(!encodable<std::pair<int, NoCodec>>);
static_assert(!encodable<int*>, "an address means nothing in another process");
static_assert(!encodable<const char*>);
static_assert(!encodable<std::optional<NoCodec>>);
static_assert(!encodable<std::map<std::string, NoCodec>>);

std::vector<std::byte> bytes_of(std::initializer_list<int> values) {
  std::vector<std::byte> out;
  for (int v : values) out.push_back(static_cast<std::byte>(v));
  return out;
}

// Encodes, checks the size promise, decodes, and returns the decoded value.
template <class T>
T round_trip(const T& value) {
  const auto bytes = encode_to_bytes(value);
  CHECK(bytes.size() == procflow::codec<T>::encoded_size(value));
  return decode_from_bytes<T>(bytes);
}

// Every strict prefix of an encoding must throw codec_error. Each prefix is copied into its own
// exactly-sized heap buffer so that a read past its end is caught by AddressSanitizer.
template <class T>
void check_every_prefix_rejected(const T& value) {
  const auto bytes = encode_to_bytes(value);
  REQUIRE(!bytes.empty());
  for (std::size_t len = 0; len < bytes.size(); ++len) {
    const std::vector<std::byte> prefix(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(len));
    INFO("prefix length ", len, " of ", bytes.size());
    CHECK_THROWS_AS(decode_from_bytes<T>(prefix), codec_error);
  }
  CHECK_NOTHROW(decode_from_bytes<T>(bytes));
}

}  // namespace

TEST_CASE("codec: trivially copyable scalars and POD structs round-trip as raw bytes") {
  CHECK(round_trip(0) == 0);
  CHECK(round_trip(-123456789) == -123456789);
  CHECK(round_trip(std::uint64_t{0xfedcba9876543210ULL}) == 0xfedcba9876543210ULL);
  CHECK(round_trip(3.25) == 3.25);
  CHECK(round_trip('x') == 'x');
  CHECK(procflow::codec<std::uint64_t>::encoded_size(0) == 8);
  static_assert(procflow::is_raw_codec_v<std::uint64_t> && procflow::is_raw_codec_v<double>);
  static_assert(!procflow::is_raw_codec_v<Pod>, "padded: field by field");

  const Pod pod{-7, 2.5, {'a', '\0', 'b', 'c', '\xff'}};
  CHECK(procflow::codec<Pod>::encoded_size(pod) == 4 + 8 + 5);
  CHECK(round_trip(pod) == pod);
  check_every_prefix_rejected(pod);
}

TEST_CASE("codec: bool round-trips and a corrupt bool byte is rejected") {
  CHECK(round_trip(true) == true);
  CHECK(round_trip(false) == false);
  CHECK(encode_to_bytes(true) == bytes_of({1}));
  for (int b : {2, 0x7f, 0x80, 0xff}) {
    INFO("byte ", b);
    CHECK_THROWS_AS(decode_from_bytes<bool>(bytes_of({b})), codec_error);
  }
  // The same check guards optional's presence flag.
  CHECK_THROWS_AS(decode_from_bytes<std::optional<std::string>>(bytes_of({2, 0})), codec_error);
}

TEST_CASE("codec: std::string: empty, binary with NULs, 10 MB") {
  CHECK(round_trip(std::string()).empty());
  CHECK(encode_to_bytes(std::string()).size() == 1);

  std::string binary;
  for (int i = 0; i < 512; ++i) binary.push_back(static_cast<char>(i % 256));
  binary += std::string(3, '\0');
  CHECK(round_trip(binary) == binary);

  std::string big(10 * 1000 * 1000, '\0');
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>((i * 2654435761u) >> 13);
  const auto decoded = round_trip(big);
  CHECK(decoded.size() == big.size());
  CHECK(decoded == big);
}

TEST_CASE("codec: containers round-trip") {
  SUBCASE("vector<int>") {
    CHECK(round_trip(std::vector<int>{}).empty());
    const std::vector<int> v{1, -2, 3, 1 << 30, 0};
    CHECK(round_trip(v) == v);
    std::vector<int> many(100000);
    for (std::size_t i = 0; i < many.size(); ++i) many[i] = static_cast<int>(i * 7);
    CHECK(round_trip(many) == many);
  }
  SUBCASE("vector<string>") {
    const std::vector<std::string> v{"", "a", std::string(300, 'z'), std::string("nul\0inside", 10)};
    CHECK(round_trip(v) == v);
  }
  SUBCASE("pair and tuple") {
    const std::pair<int, std::string> p{42, "answer"};
    CHECK(round_trip(p) == p);
    const std::tuple<int, std::string, double, std::vector<int>> t{1, "two", 3.0, {4, 5}};
    CHECK(round_trip(t) == t);
  }
  SUBCASE("optional, empty and full") {
    CHECK(!round_trip(std::optional<std::string>{}).has_value());
    CHECK(round_trip(std::optional<std::string>{"here"}) == std::optional<std::string>{"here"});
    CHECK(round_trip(std::optional<std::string>{""}) == std::optional<std::string>{""});
    CHECK(!round_trip(std::optional<int>{}).has_value());
    CHECK(round_trip(std::optional<int>{5}) == std::optional<int>{5});
  }
  SUBCASE("map and unordered_map") {
    const std::map<std::string, int> m{{"a", 1}, {"b", 2}, {"", 0}};
    CHECK(round_trip(m) == m);
    const std::unordered_map<int, std::string> u{{1, "one"}, {2, "two"}, {-3, ""}};
    CHECK(round_trip(u) == u);
    CHECK(round_trip(std::map<int, int>{}).empty());
  }
  SUBCASE("nested map<string, vector<pair<int, string>>>") {
    const std::map<std::string, std::vector<std::pair<int, std::string>>> n{
        {"x", {{1, "a"}, {2, ""}}}, {"", {}}, {"long", {{-1, std::string(1000, 'q')}}}};
    CHECK(round_trip(n) == n);
  }
}

TEST_CASE("codec: a user specialization plugs into the built-ins, and decoding leaks nothing") {
  REQUIRE(Tracked::live == 0);
  {
    const Tracked t(7, "seven");
    CHECK(round_trip(t) == t);
    const std::vector<Tracked> v{Tracked(1, "a"), Tracked(2, std::string(200, 'b')), Tracked(3, "")};
    CHECK(round_trip(v) == v);
    const std::map<int, Tracked> m{{1, Tracked(10, "ten")}};
    CHECK(round_trip(m) == m);
    // A decode that fails halfway through a container destroys what it built.
    check_every_prefix_rejected(v);
  }
  CHECK(Tracked::live == 0);
}

TEST_CASE("codec: truncated input at every prefix length throws codec_error") {
  check_every_prefix_rejected(std::uint64_t{12345});
  check_every_prefix_rejected(true);
  check_every_prefix_rejected(std::string("hello, world"));
  check_every_prefix_rejected(std::string(300, 'x'));  // two-byte length varint
  check_every_prefix_rejected(std::vector<int>{1, 2, 3, 4});
  check_every_prefix_rejected(std::vector<std::string>{"a", "", "bcd", std::string(200, 'e')});
  check_every_prefix_rejected(std::pair<std::string, std::int64_t>{"k", 9});
  check_every_prefix_rejected(std::tuple<int, std::string, std::optional<std::string>>{1, "x", "y"});
  check_every_prefix_rejected(std::optional<std::string>{"opt"});
  check_every_prefix_rejected(
      std::map<std::string, std::vector<std::pair<int, std::string>>>{{"x", {{1, "a"}, {2, "bb"}}}, {"y", {}}});
  check_every_prefix_rejected(std::unordered_map<int, std::string>{{1, "one"}, {2, "two"}});
}

TEST_CASE("codec: a corrupt count throws without allocating for it") {
  // Count 2^62 followed by a few bytes: must be refused before any allocation sized by it.
  std::vector<std::byte> huge;
  auto* end = procflow::detail::put_varint(std::uint64_t{1} << 62, [&] {
    huge.resize(16);
    return huge.data();
  }());
  huge.resize(static_cast<std::size_t>(end - huge.data()) + 4);

  largest_allocation.store(0);
  CHECK_THROWS_AS(decode_from_bytes<std::vector<int>>(huge), codec_error);
  CHECK_THROWS_AS(decode_from_bytes<std::vector<std::string>>(huge), codec_error);
  CHECK_THROWS_AS(decode_from_bytes<std::string>(huge), codec_error);
  CHECK_THROWS_AS((decode_from_bytes<std::map<int, int>>(huge)), codec_error);
  CHECK_THROWS_AS((decode_from_bytes<std::unordered_map<int, int>>(huge)), codec_error);
  // A count that fits the remaining bytes but not in elements of 8 bytes each.
  const auto plausible = bytes_of({10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0});
  CHECK_THROWS_AS(decode_from_bytes<std::vector<std::uint64_t>>(plausible), codec_error);
  // Error messages are built as std::string; nothing should come near a megabyte.
  CHECK(largest_allocation.load() < (std::size_t{1} << 20));

  // A varint longer than 10 bytes is malformed.
  std::vector<std::byte> endless(12, std::byte{0x80});
  CHECK_THROWS_WITH_AS(decode_from_bytes<std::string>(endless), doctest::Contains("varint"), codec_error);
}

TEST_CASE("codec: duplicate map keys are rejected") {
  // count 2, then key 1 -> value 5 twice (int keys and values are 4 raw bytes each).
  const auto dup = bytes_of({2, 1, 0, 0, 0, 5, 0, 0, 0, 1, 0, 0, 0, 6, 0, 0, 0});
  CHECK_THROWS_AS((decode_from_bytes<std::map<int, int>>(dup)), codec_error);
  CHECK_THROWS_AS((decode_from_bytes<std::unordered_map<int, int>>(dup)), codec_error);
}

TEST_CASE("codec: decode_from_bytes rejects trailing bytes") {
  auto bytes = encode_to_bytes(std::string("abc"));
  bytes.push_back(std::byte{0});
  CHECK_THROWS_WITH_AS(decode_from_bytes<std::string>(bytes), doctest::Contains("trailing"), codec_error);
  auto ints = encode_to_bytes(std::int32_t{5});
  ints.push_back(std::byte{1});
  CHECK_THROWS_AS(decode_from_bytes<std::int32_t>(ints), codec_error);
  // The decoder itself leaves the rest for the next value: items are back to back in a batch.
  auto two = encode_to_bytes(std::string("first"));
  const auto second = encode_to_bytes(std::string("second"));
  two.insert(two.end(), second.begin(), second.end());
  procflow::decoder in(two);
  CHECK(procflow::codec<std::string>::decode(in) == "first");
  CHECK(procflow::codec<std::string>::decode(in) == "second");
  CHECK(in.empty());
}

TEST_CASE("codec: raw bytes only for types whose every bit pattern is valid and that point nowhere") {
  using procflow::is_raw_codec_v;
  static_assert(is_raw_codec_v<int> && is_raw_codec_v<char> && is_raw_codec_v<double> && is_raw_codec_v<std::byte>);
  static_assert(is_raw_codec_v<Color> && is_raw_codec_v<std::array<std::int16_t, 3>> && is_raw_codec_v<std::array<Color, 2>>);
  static_assert(is_raw_codec_v<Point> && is_raw_codec_v<std::array<Point, 2>>);
  // Checked, not raw: bool, an enum over bool, optional, pair, a user's own codec.
  static_assert(!is_raw_codec_v<bool> && !is_raw_codec_v<Flag> && encodable<Flag>);
  static_assert(!is_raw_codec_v<std::optional<int>> && encodable<std::optional<int>>);
  static_assert(!is_raw_codec_v<std::pair<int, int>> && !is_raw_codec_v<std::array<bool, 4>>);
  static_assert(!is_raw_codec_v<Celsius> && std::is_trivially_copyable_v<Celsius>);
  static_assert(!is_raw_codec_v<CheckedBoolInt> && !is_raw_codec_v<Trip> && !is_raw_codec_v<Empty>);
  // Refused: pointers and views (alone or inside), and structs that did not opt in.
  static_assert(!encodable<std::string_view> && !encodable<std::span<const int>> && !encodable<const char*>);
  static_assert(!encodable<std::optional<const char*>> && !encodable<std::vector<std::string_view>>);
  static_assert(!encodable<int Pod::*>);
  static_assert(!encodable<BoolInt> && !encodable<HoldsPointer> && !encodable<PlainNumbers>);
  static_assert(procflow::detail::holds_address_v<std::optional<const char*>>);
  static_assert(procflow::detail::holds_address_v<std::pair<int, std::span<const int>>>);
  static_assert(!procflow::detail::holds_address_v<std::map<std::string, std::vector<int>>>);

  CHECK(encode_to_bytes(Color::blue) == bytes_of({2}));
  CHECK(round_trip(std::array<std::int16_t, 3>{1, -2, 3}) == std::array<std::int16_t, 3>{1, -2, 3});
  CHECK(round_trip(std::array<std::string, 2>{"a", ""}) == std::array<std::string, 2>{"a", ""});
  CHECK(encode_to_bytes(std::array<int, 0>{}).empty());
  CHECK(round_trip(Flag::on) == Flag::on);
  CHECK_THROWS_AS(decode_from_bytes<Flag>(bytes_of({2})), codec_error);
}

TEST_CASE("codec: a bool inside optional<int> or a {bool, int} struct refuses the byte 0x02") {
  // Both the 5-byte encoding and the 8-byte object representation of an engaged optional whose
  // flag is 0x02: neither may decode (a bool holding 2 is undefined behaviour).
  CHECK(encode_to_bytes(std::optional<int>{5}) == bytes_of({1, 5, 0, 0, 0}));
  CHECK_THROWS_AS(decode_from_bytes<std::optional<int>>(bytes_of({2, 5, 0, 0, 0})), codec_error);
  CHECK_THROWS_AS(decode_from_bytes<std::optional<int>>(bytes_of({5, 0, 0, 0, 2, 0, 0, 0})), codec_error);
  CHECK(round_trip(std::optional<int>{-9}) == std::optional<int>{-9});

  CHECK(encode_to_bytes(CheckedBoolInt{true, 7}) == bytes_of({1, 7, 0, 0, 0}));
  CHECK(round_trip(CheckedBoolInt{true, 7}) == CheckedBoolInt{true, 7});
  CHECK_THROWS_WITH_AS(decode_from_bytes<CheckedBoolInt>(bytes_of({2, 7, 0, 0, 0})), doctest::Contains("bool"), codec_error);
  CHECK_THROWS_AS(decode_from_bytes<std::vector<CheckedBoolInt>>(bytes_of({1, 2, 7, 0, 0, 0})), codec_error);
}

TEST_CASE("codec: PROCFLOW_CODEC derives a checked codec from the fields, raw when that is the same") {
  SUBCASE("a record with a string, containers, an enum, an optional, a C array and a nested record") {
    Trip t;
    t.origin = "SFO";
    t.delay = -12;
    t.miles = 339.5;
    t.color = Color::green;
    t.stops = {{1, 2, {0.5f, 1.5f}}, {3, 4, {2.5f, 3.5f}}};
    t.tags[0] = "red-eye";
    t.extra = {true, 99};
    // Fields travel in the order listed: delay first.
    const auto bytes = encode_to_bytes(t);
    CHECK(bytes.size() == procflow::codec<Trip>::encoded_size(t));
    CHECK(std::vector<std::byte>(bytes.begin(), bytes.begin() + 4) == bytes_of({0xf4, 0xff, 0xff, 0xff}));
    CHECK(round_trip(t) == t);
    CHECK(round_trip(Trip{}) == Trip{});
    check_every_prefix_rejected(t);
    const std::vector<Trip> many(3, t);
    CHECK(round_trip(many) == many);
  }
  SUBCASE("no padding and raw fields: the raw codec, bytes equal to the object") {
    const Point p{-1, 2, {0.25f, -8.0f}};
    static_assert(sizeof(Point) == 16 && procflow::codec<Point>::encoded_size(Point{}) == 16);
    const auto bytes = encode_to_bytes(p);
    CHECK(std::memcmp(bytes.data(), &p, sizeof p) == 0);
    CHECK(round_trip(p) == p);
    const std::vector<Point> v{p, {3, 4, {5.0f, 6.0f}}};
    CHECK(round_trip(v) == v);
  }
  SUBCASE("an empty struct encodes to nothing") {
    CHECK(encode_to_bytes(Empty{}).empty());
    CHECK_NOTHROW(decode_from_bytes<Empty>({}));
    CHECK(encode_to_bytes(std::tuple<>{}).empty());
  }
}

TEST_CASE("codec: a user codec for a trivially copyable type is used inside containers too") {
  CHECK(encode_to_bytes(Celsius{5}) == bytes_of({0xfb, 0xff, 0xff, 0xff}));
  const std::vector<Celsius> v{{5}, {-3}};
  const auto bytes = encode_to_bytes(v);
  CHECK(bytes == bytes_of({2, 0xfb, 0xff, 0xff, 0xff, 3, 0, 0, 0}));
  const auto back = decode_from_bytes<std::vector<Celsius>>(bytes);
  REQUIRE(back.size() == 2);
  CHECK(back[0].degrees == 5);
  CHECK(back[1].degrees == -3);
  const auto arr = decode_from_bytes<std::array<Celsius, 2>>(encode_to_bytes(std::array<Celsius, 2>{{{7}, {8}}}));
  CHECK(arr[0].degrees == 7);
  CHECK(arr[1].degrees == 8);
}

// Found by tests/fuzz/codec_fuzz: a container of zero-byte elements (empty structs, std::tuple<>)
// encodes to its count alone, and the decoder refused that count as "exceeding the bytes left".
TEST_CASE("codec: containers of zero-byte elements round-trip") {
  const std::vector<Empty> empties(3);
  CHECK(encode_to_bytes(empties).size() == 1);
  CHECK(decode_from_bytes<std::vector<Empty>>(encode_to_bytes(empties)).size() == 3);
  CHECK(decode_from_bytes<std::vector<std::tuple<>>>(encode_to_bytes(std::vector<std::tuple<>>(1000))).size() == 1000);
  const std::map<int, std::vector<Empty>> nested{{1, std::vector<Empty>(2)}, {2, {}}};
  const auto back = decode_from_bytes<std::map<int, std::vector<Empty>>>(encode_to_bytes(nested));
  CHECK(back.at(1).size() == 2);
  CHECK(back.at(2).empty());
  const std::optional<std::vector<std::array<Empty, 2>>> wrapped{std::vector<std::array<Empty, 2>>(5)};
  CHECK(decode_from_bytes<decltype(wrapped)::value_type>(encode_to_bytes(*wrapped)).size() == 5);
  CHECK(decode_from_bytes<std::vector<std::pair<Empty, std::tuple<>>>>(encode_to_bytes(std::vector<std::pair<Empty, std::tuple<>>>(4))).size() == 4);
}

TEST_CASE("codec: a corrupt count of zero-byte elements is bounded, and counts are checked against the element size") {
  std::vector<std::byte> huge(16);
  huge.resize(static_cast<std::size_t>(procflow::detail::put_varint(std::uint64_t{1} << 40, huge.data()) - huge.data()));
  largest_allocation.store(0);
  CHECK_THROWS_WITH_AS(decode_from_bytes<std::vector<Empty>>(huge), doctest::Contains("zero-byte"), codec_error);
  CHECK_THROWS_AS(decode_from_bytes<std::vector<std::tuple<>>>(huge), codec_error);
  CHECK(largest_allocation.load() < (std::size_t{1} << 20));
  // 3 pairs of 8-byte integers cannot fit in 20 bytes: refused from the count.
  auto short_pairs = bytes_of({3});
  short_pairs.resize(21);
  CHECK_THROWS_WITH_AS((decode_from_bytes<std::vector<std::pair<std::uint64_t, std::uint64_t>>>(short_pairs)),
                       doctest::Contains("element count 3"), codec_error);
}

// Found by the codec fuzzing work (UBSan: "load of value 4294967295, which is not a valid value
// for type 'Color'"): an enum without a fixed underlying type was decoded as raw bytes, but only
// the values of the smallest bit-field holding its enumerators are valid, so a corrupt byte was
// undefined behaviour. Such enums are refused at compile time (tests/compile_fail/unfixed_enum);
// enums with a fixed underlying type stay raw.
namespace unfixed {
enum Shade { light, dark };
enum Sized : std::int32_t { small_size, large_size };
enum class Scoped { a, b };
}  // namespace unfixed

TEST_CASE("codec: an enum without a fixed underlying type has no codec; fixed ones are raw") {
  using procflow::is_raw_codec_v;
  CHECK_FALSE(encodable<unfixed::Shade>);
  CHECK_FALSE(encodable<std::vector<unfixed::Shade>>);
  CHECK_FALSE(encodable<std::optional<unfixed::Shade>>);
  CHECK(is_raw_codec_v<unfixed::Sized>);
  CHECK(is_raw_codec_v<unfixed::Scoped>);
  CHECK(is_raw_codec_v<Color>);
  CHECK_FALSE(is_raw_codec_v<Flag>);  // over bool: checked
  CHECK_THROWS_AS(decode_from_bytes<Flag>(bytes_of({2})), codec_error);
  CHECK(decode_from_bytes<unfixed::Sized>(encode_to_bytes(unfixed::large_size)) == unfixed::large_size);
}
