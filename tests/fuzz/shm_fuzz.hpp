// The shared-memory fuzz input (shm_fuzz.cpp), shared with the seed generator (corpus_gen.cpp):
//   byte 0: bit 0: 2 producers, bit 1: 2 consumers, bit 2: ordered inboxes, bits 3-4: log2 of
//           the slot count, bit 5: keep every ring's geometry line (fuzz indices and slots only),
//           bit 6: the segment header is rewritten too (from the last 24 bytes of the input)
//   byte 1: bits 0-1: payload bytes = 64 << bits, bits 2-3: item type the consumer decodes,
//           bits 4-7: offset (in cache lines) of one extra attach_ring()
//   then:   bytes copied over the segment from the first ring on (rings, events, membership).
#pragma once

#include "channel/channel.hpp"

#include <cstdint>

namespace procflow_fuzz {

struct ShmConfig {
  std::uint32_t producers = 1;
  std::uint32_t consumers = 1;
  bool ordered = false;
  bool keep_geometry = false;
  bool rewrite_segment_header = false;
  procflow::channel::RingGeometry geometry{1, 64};
  unsigned item_type = 0;
  unsigned extra_attach_line = 0;
};

inline ShmConfig shm_config(std::uint8_t b0, std::uint8_t b1) {
  ShmConfig c;
  c.producers = 1 + (b0 & 1u);
  c.consumers = 1 + ((b0 >> 1) & 1u);
  c.ordered = (b0 >> 2) & 1u;
  c.geometry.slot_count = 1u << ((b0 >> 3) & 3u);
  c.keep_geometry = (b0 >> 5) & 1u;
  c.rewrite_segment_header = (b0 >> 6) & 1u;
  c.geometry.payload_bytes = 64u << (b1 & 3u);
  c.item_type = (b1 >> 2) & 3u;
  c.extra_attach_line = b1 >> 4;
  return c;
}

inline constexpr std::size_t shm_input_header = 2;

}  // namespace procflow_fuzz
