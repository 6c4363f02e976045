// aggregation_switch: a reduce_by_key replica's adaptive choice between pre-aggregating its keys
// (one partial held to the end of its stream, sent once) and the partitioned shuffle (its
// partitions sent on as they fill, merged by their owner: each key then lives in one table, not
// in every replica's). Spark's and Flink's map-side combine turn off the same way when the
// combined table stops shrinking the data, DuckDB's thread-local tables are abandoned to their
// partitions once past a capacity.
//
// The test, after each batch: a partial that holds `switch_keys` distinct keys or more while its
// replica folded fewer than 2 items a key into it is not paying (pre_aggregate, options.hpp).
// Once switched, the replica sends its partitions whenever they hold spill_keys() keys: a table
// small enough to stay in cache, so folding into it stays cheap and still combines the repeats
// that are close together.
#pragma once

#include <procflow/options.hpp>

#include <algorithm>
#include <cstdint>

namespace procflow::detail {

// How a replica's piece of a keyed result came about (it travels with the piece: keyed_piece).
enum class aggregation_mode : std::uint8_t {
  pre_aggregated = 0,   // the replica's whole partial, sent at the end of its stream
  shuffled = 1,         // sent early, after the replica switched
  key_partitioned = 2,  // the replica's input was dispatched by key: it owns its keys already
};

class aggregation_switch {
 public:
  // Partitions sent at once after the switch hold at most this many keys together (16 B an
  // entry for 8-byte keys and accumulators: about 1 MiB, in cache).
  static constexpr std::uint64_t shuffle_table_keys = std::uint64_t{1} << 16;

  explicit aggregation_switch(std::uint64_t switch_keys) noexcept : switch_keys_(switch_keys) {}

  // Items folded into the partial since it was last sent.
  void folded(std::uint64_t items) noexcept { items_ += items; }

  // After a batch, with the partial holding `keys` distinct keys: whether to send it now.
  bool send_now(std::uint64_t keys) noexcept {
    if (!switched_) {
      if (switch_keys_ == pre_aggregate::never || items_ == 0) return false;
      if (switch_keys_ != 0 && (keys < switch_keys_ || items_ >= 2 * keys)) return false;
      switched_ = true;
      keys_at_switch_ = keys;
      items_at_switch_ = items_;
    }
    return keys != 0 && keys >= spill_keys();
  }
  // The partial was sent: count afresh.
  void sent() noexcept { items_ = 0; }

  bool switched() const noexcept { return switched_; }
  std::uint64_t keys_at_switch() const noexcept { return keys_at_switch_; }
  std::uint64_t items_at_switch() const noexcept { return items_at_switch_; }

  // After the switch, the partial is sent once it holds this many keys (every batch when the
  // switch is forced with pre_aggregate::off(), at most shuffle_table_keys otherwise).
  std::uint64_t spill_keys() const noexcept {
    return switch_keys_ == 0 ? 1 : std::min(switch_keys_, shuffle_table_keys);
  }

 private:
  std::uint64_t switch_keys_;
  std::uint64_t items_ = 0;
  bool switched_ = false;
  std::uint64_t keys_at_switch_ = 0;
  std::uint64_t items_at_switch_ = 0;
};

}  // namespace procflow::detail
