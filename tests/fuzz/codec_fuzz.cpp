// libFuzzer target: the codec decoders over arbitrary bytes (include/procflow/codec.hpp, through
// detail::decode_items as a consumer replica runs them on a slot, and decode_from_bytes).
// Any input must decode or throw codec_error: never crash, read out of bounds, hit UB, or
// allocate more than the input can justify (run with -malloc_limit_mb, see cmake/fuzz.sh). A
// value that decodes must re-encode to a stable encoding of exactly encoded_size() bytes.
#include "fuzz/fuzz_types.hpp"

#include <procflow/detail/stage.hpp>

#include <cstdio>
#include <cstdlib>
#include <span>

using namespace procflow;

namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "codec_fuzz: %s\n", what);
  std::abort();
}

// encode(decode(encode(v))) == encode(v), each of encoded_size() bytes.
template <class T>
void check_round_trip(const T& value) {
  const std::vector<std::byte> once = encode_to_bytes(value);
  std::vector<std::byte> twice;
  try {
    twice = encode_to_bytes(decode_from_bytes<T>(once));
  } catch (const codec_error& e) {
    std::fprintf(stderr, "codec_fuzz: %s\n", e.what());
    fail("a value's own encoding does not decode");
  }
  if (once.size() != twice.size()) fail("re-encoding changed the size");
  if (procflow_fuzz::order_stable_v<T> && once != twice) fail("re-encoding changed the bytes");
}

struct Run {
  std::span<const std::byte> bytes;
  std::uint32_t items;

  template <class T>
  void operator()() const {
    // A batch as a slot delivers it (the count was checked against the slot's capacity).
    detail::batch_view batch;
    batch.bytes = bytes;
    batch.items = items;
    std::vector<T> decoded;
    try {
      detail::decode_items(batch, decoded);
      if (decoded.size() != items) fail("decode_items returned the wrong count");
      for (const T& v : decoded) check_round_trip(v);
    } catch (const codec_error&) {
    }
    // One value that must use every byte.
    try {
      check_round_trip(decode_from_bytes<T>(bytes));
    } catch (const codec_error&) {
    }
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < procflow_fuzz::codec_input_header) return 0;
  const std::size_t type = data[0] % procflow_fuzz::type_count;
  const std::uint32_t items = std::uint32_t{data[1]} | (std::uint32_t{data[2]} << 8);
  const auto* p = reinterpret_cast<const std::byte*>(data) + procflow_fuzz::codec_input_header;
  procflow_fuzz::with_type(type, Run{{p, size - procflow_fuzz::codec_input_header}, items});
  return 0;
}
