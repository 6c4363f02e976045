// Writes the seed corpus of the fuzz targets: valid inputs made with procflow's own encoders, so
// the fuzzers start from deep inside the formats. Run by make_corpus.sh:
//   corpus_gen <dir>   writes <dir>/codec_fuzz/* and <dir>/shm_fuzz/*
#include "fuzz/fuzz_types.hpp"
#include "fuzz/shm_fuzz.hpp"

#include "channel/outbox.hpp"
#include "shm/segment.hpp"

#include <procflow/detail/stage.hpp>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <type_traits>
#include <vector>

using namespace procflow;
namespace fs = std::filesystem;

namespace {

template <class T>
struct is_vector : std::false_type {};
template <class T, class A>
struct is_vector<std::vector<T, A>> : std::true_type {};
template <class T>
struct is_optional : std::false_type {};
template <class T>
struct is_optional<std::optional<T>> : std::true_type {};
template <class T>
struct is_pair : std::false_type {};
template <class A, class B>
struct is_pair<std::pair<A, B>> : std::true_type {};
template <class T>
struct is_tuple : std::false_type {};
template <class... Ts>
struct is_tuple<std::tuple<Ts...>> : std::true_type {};
template <class T>
struct is_array : std::false_type {};
template <class T, std::size_t N>
struct is_array<std::array<T, N>> : std::true_type {};
template <class T>
concept map_like = requires { typename T::key_type; typename T::mapped_type; };

// A small, varied value of T, seeded by k.
template <class T>
T sample(int k) {
  if constexpr (std::is_same_v<T, bool>) {
    return k % 2 == 1;
  } else if constexpr (std::is_same_v<T, procflow_fuzz::Toggle>) {
    return k % 2 ? procflow_fuzz::Toggle::on : procflow_fuzz::Toggle::off;
  } else if constexpr (std::is_enum_v<T>) {
    return static_cast<T>(k % 2);
  } else if constexpr (std::is_arithmetic_v<T>) {
    return static_cast<T>(k * 37 + 1);
  } else if constexpr (std::is_same_v<T, std::string>) {
    return std::string(static_cast<std::size_t>(k % 5), static_cast<char>('a' + k % 26)) + "item";
  } else if constexpr (is_vector<T>::value) {
    T v;
    for (int i = 0; i < k % 4; ++i) v.push_back(sample<typename T::value_type>(k + i));
    return v;
  } else if constexpr (is_optional<T>::value) {
    if (k % 3 == 0) return std::nullopt;
    return sample<typename T::value_type>(k);
  } else if constexpr (is_pair<T>::value) {
    return {sample<typename T::first_type>(k), sample<typename T::second_type>(k + 1)};
  } else if constexpr (is_tuple<T>::value) {
    return std::apply([k](auto... e) { return T{sample<decltype(e)>(k)...}; }, T{});
  } else if constexpr (is_array<T>::value) {
    T a{};
    int i = 0;
    for (auto& e : a) e = sample<typename T::value_type>(k + i++);
    return a;
  } else if constexpr (map_like<T>) {
    T m;
    for (int i = 0; i < k % 3 + 1; ++i) m.emplace(sample<typename T::key_type>(k + i), sample<typename T::mapped_type>(k));
    return m;
  } else if constexpr (std::is_same_v<T, procflow_fuzz::Trip>) {
    procflow_fuzz::Trip t;
    t.origin = sample<std::string>(k);
    t.delay = -k;
    t.miles = k * 1.5;
    t.tags = sample<std::vector<std::optional<std::string>>>(k + 2);
    t.code[0] = 'X';
    t.level = procflow_fuzz::Level::high;
    t.toggle = procflow_fuzz::Toggle::on;
    t.flag = k % 2 == 0;
    t.counts = {{"a", 1}, {"bb", static_cast<std::uint32_t>(k)}};
    return t;
  } else if constexpr (std::is_same_v<T, procflow_fuzz::Point>) {
    return {k, static_cast<float>(k) / 2};
  } else {
    return T{};
  }
}

void write(const fs::path& file, const std::vector<std::byte>& bytes) {
  std::ofstream out(file, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + file.string());
}

// codec_fuzz: for every type, a batch of 1 and of 3 items.
void codec_seeds(const fs::path& dir) {
  fs::create_directories(dir);
  for (std::size_t type = 0; type < procflow_fuzz::type_count; ++type) {
    procflow_fuzz::with_type(type, [&]<class T>() {
      for (int items : {1, 3}) {
        std::vector<std::byte> bytes{std::byte(type), std::byte(items), std::byte{0}};
        for (int i = 0; i < items; ++i) {
          const auto encoded = encode_to_bytes(sample<T>(i + items));
          bytes.insert(bytes.end(), encoded.begin(), encoded.end());
        }
        write(dir / ("type" + std::to_string(type) + "_items" + std::to_string(items)), bytes);
      }
    });
  }
}

// shm_fuzz: a channel written by real Outboxes (strings, including one item split over slots),
// captured from the first ring on, behind the two config bytes.
void shm_seed(const fs::path& file, std::uint8_t b0, std::uint8_t b1, int items) {
  using namespace procflow::channel;
  const procflow_fuzz::ShmConfig config = procflow_fuzz::shm_config(b0, b1);
  shm::SegmentLayout layout;
  Channel channel(layout, config.producers, config.consumers, config.geometry);
  shm::Segment segment(layout);
  channel.create(segment);
  OutboxOptions options;
  options.source = true;
  options.dispatch = config.ordered ? Dispatch::by_sequence : Dispatch::round_robin;
  options.spin = 0;
  for (std::uint32_t p = 0; p < config.producers; ++p) {
    Outbox out(channel, p, options);
    // At most what fits without a consumer: one item per slot, a split item last.
    for (int i = 0; i < items; ++i) detail::encode_item(sample<std::string>(i + static_cast<int>(p)), out);
    if (config.geometry.slot_count >= 4 && config.item_type == 0)
      detail::encode_item(std::string(config.geometry.payload_bytes + 10, 'L'), out);
    out.flush();
    out.close();
  }
  const auto* first = reinterpret_cast<const std::byte*>(channel.ring(0, 0).shared);
  std::vector<std::byte> bytes{std::byte{b0}, std::byte{b1}};
  const std::byte* end = segment.base() + segment.size();
  bytes.insert(bytes.end(), first, end);
  write(file, bytes);
}

void shm_seeds(const fs::path& dir) {
  fs::create_directories(dir);
  // b0: 1 ring of 4 slots / 2x2 rings of 4 / ordered 1x2 of 8; keep geometry or not.
  // b1: 64- or 128-byte payloads, string items.
  shm_seed(dir / "1x1_4slots", 0x10, 0x00, 2);
  shm_seed(dir / "1x1_4slots_keep_geometry", 0x30, 0x01, 2);
  shm_seed(dir / "2x2_4slots", 0x13, 0x01, 2);
  shm_seed(dir / "1x2_ordered_8slots", 0x1e, 0x00, 3);
  shm_seed(dir / "1x1_1slot_u64", 0x00, 0x04, 1);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: corpus_gen <corpus dir>\n";
    return 2;
  }
  codec_seeds(fs::path(argv[1]) / "codec_fuzz");
  shm_seeds(fs::path(argv[1]) / "shm_fuzz");
  return 0;
}
