// What a reduce_by_key replica holds (keyed_partial: its groups, radix-partitioned by the top bits
// of the mixed key hash) and sends to the caller (keyed_piece: one partition's entries, with a
// codec that copies raw K/Acc entries in bulk), and the caller's side (keyed_collector: files the
// pieces by partition, merges them partition by partition, the partitions in parallel on a few
// threads that are joined before run() returns, and hands the partitions over as a keyed_result
// without rebuilding one map).
#pragma once

#include <procflow/codec.hpp>
#include <procflow/detail/aggregation_switch.hpp>
#include <procflow/detail/flat_table.hpp>
#include <procflow/detail/partition_workers.hpp>
#include <procflow/detail/stage.hpp>
#include <procflow/detail/table_memory.hpp>
#include <procflow/keyed.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace procflow {
namespace detail {

template <class K, class V, class Hash>
struct keyed_partial {
  using table = flat_table<K, V, Hash>;
  std::vector<table> parts = std::vector<table>(keyed_partition_count);

  table& part_of(std::uint64_t hash) noexcept { return parts[keyed_partition_of(hash)]; }
  std::size_t size() const noexcept {
    std::size_t n = 0;
    for (const auto& p : parts) n += p.size();
    return n;
  }
  void clear() noexcept {
    for (auto& p : parts) p.clear();
  }
};

// Entries of raw keys and accumulators without padding travel as one block per partition.
template <class K, class V>
inline constexpr bool raw_entries_v = is_raw_codec_v<K> && is_raw_codec_v<V> && std::is_trivially_copyable_v<keyed_entry<K, V>> &&
                                      sizeof(keyed_entry<K, V>) == sizeof(K) + sizeof(V);

// What travels: one piece per non-empty partition of a replica's keyed_partial (its index and its
// entries), so neither side ever holds the whole partial encoded (at 5 M keys that was an 80 MB
// encode buffer in each replica and as much reassembled in the caller), and the caller files each
// piece under its partition as it arrives. The first piece a replica sends after its
// aggregation_switch switched carries what the replica saw then (for the report's note).
template <class K, class V>
struct keyed_piece {
  std::uint32_t partition = 0;
  aggregation_mode mode = aggregation_mode::pre_aggregated;
  std::uint64_t keys_at_switch = 0;   // 0 but in that first piece
  std::uint64_t items_at_switch = 0;
  std::vector<keyed_entry<K, V>, table_allocator<keyed_entry<K, V>>> entries;  // flat_table's entry_vector
};

}  // namespace detail

// Encoded: the partition index, the mode, the switch's keys and items, the entry count, then the entries (a block of bytes for raw
// entries, key then accumulator otherwise). The index is rebuilt by the receiver.
template <class K, class V>
struct codec<detail::keyed_piece<K, V>> {
  using piece = detail::keyed_piece<K, V>;
  using entry = keyed_entry<K, V>;
  static constexpr bool raw = detail::raw_entries_v<K, V>;

  static std::size_t encoded_size(const piece& p) noexcept {
    std::size_t n = detail::varint_size(p.partition) + 1 + detail::varint_size(p.keys_at_switch) +
                    detail::varint_size(p.items_at_switch) + detail::varint_size(p.entries.size());
    if constexpr (raw) {
      n += p.entries.size() * sizeof(entry);
    } else {
      for (const auto& e : p.entries) n += codec<K>::encoded_size(e.first) + codec<V>::encoded_size(e.second);
    }
    return n;
  }
  static std::byte* encode(const piece& p, std::byte* out) noexcept {
    out = detail::put_varint(p.partition, out);
    *out++ = static_cast<std::byte>(p.mode);
    out = detail::put_varint(p.keys_at_switch, out);
    out = detail::put_varint(p.items_at_switch, out);
    out = detail::put_varint(p.entries.size(), out);
    if constexpr (raw) {
      if (!p.entries.empty()) std::memcpy(out, p.entries.data(), p.entries.size() * sizeof(entry));
      out += p.entries.size() * sizeof(entry);
    } else {
      for (const auto& e : p.entries) out = codec<V>::encode(e.second, codec<K>::encode(e.first, out));
    }
    return out;
  }
  static piece decode(decoder& in) {
    piece p;
    const std::uint64_t partition = in.take_varint();
    if (partition >= keyed_partition_count) throw codec_error("codec: keyed piece with a partition index out of range");
    p.partition = static_cast<std::uint32_t>(partition);
    const auto mode = static_cast<std::uint8_t>(*in.take(1));
    if (mode > static_cast<std::uint8_t>(detail::aggregation_mode::key_partitioned))
      throw codec_error("codec: keyed piece with an unknown aggregation mode");
    p.mode = static_cast<detail::aggregation_mode>(mode);
    p.keys_at_switch = in.take_varint();
    p.items_at_switch = in.take_varint();
    const std::size_t n = in.take_count();
    if constexpr (raw) {
      const std::byte* bytes = in.take(n * sizeof(entry));  // n <= remaining, so no overflow
      {
        // A replica's pre-aggregated partition, kept until the end of the run and then adopted or
        // merged: sized once and written whole here, so on huge pages (a fault per 2 MiB instead
        // of one per 4 KiB page; the caller's time receiving a million groups was mostly faults)
        // when it fills its arena block (table_memory::fills_its_block). Not a shuffled piece
        // (freed right after its merge: malloc reuses that memory, the arena would hand its huge
        // pages back and fault them in again) nor a keyed one (adopted whole).
        const bool huge = p.mode == detail::aggregation_mode::pre_aggregated && detail::table_memory::fills_its_block(n * sizeof(entry));
        const auto arrays = huge ? detail::table_memory::arena_scope::arrays::every : detail::table_memory::arena_scope::arrays::none;
        detail::table_memory::arena_scope huge_pages(arrays);
        p.entries.resize(n);
      }
      if (n) std::memcpy(p.entries.data(), bytes, n * sizeof(entry));
    } else {
      p.entries.reserve(n);
      for (std::size_t i = 0; i < n; ++i) {
        K k = codec<K>::decode(in);
        V v = codec<V>::decode(in);
        p.entries.push_back(entry{std::move(k), std::move(v)});
      }
    }
    return p;
  }
};

namespace detail {

// Sends every non-empty partition of `groups` as a keyed_piece of `mode` and clears it as it goes:
// its memory is given back at once, or kept for the next fill when `keep_capacity` (a replica
// sending early, its tables small). `keys_at_switch`/`items_at_switch` go with the first piece.
template <class K, class V, class Hash, class Port>
void send_pieces(keyed_partial<K, V, Hash>& groups, Port& out, aggregation_mode mode = aggregation_mode::pre_aggregated,
                 bool keep_capacity = false, std::uint64_t keys_at_switch = 0, std::uint64_t items_at_switch = 0) {
  for (std::size_t part = 0; part < groups.parts.size(); ++part) {
    auto& table = groups.parts[part];
    if (table.empty()) continue;
    keyed_piece<K, V> piece{static_cast<std::uint32_t>(part), mode, keys_at_switch, items_at_switch, std::move(table.entries())};
    keys_at_switch = items_at_switch = 0;
    encode_item(piece, out);
    if (keep_capacity) {
      piece.entries.clear();
      table.entries() = std::move(piece.entries);
      table.clear();
    } else {
      table = typename keyed_partial<K, V, Hash>::table{};
    }
  }
}

// Runs body(i) for i in [0, n) on up to `threads` threads (the caller's among them), all joined
// before it returns; the first exception is rethrown after the join.
template <class Body>
void parallel_for_index(std::size_t n, std::size_t threads, Body&& body) {
  std::atomic<std::size_t> next{0};  // relaxed: only hands out indices; the join publishes the work
  std::atomic<bool> failed{false};   // relaxed: a hint to stop early; the exception travels by the mutex
  std::exception_ptr error;
  std::mutex error_mutex;
  auto work = [&] {
    for (std::size_t i; !failed.load(std::memory_order_relaxed) && (i = next.fetch_add(1, std::memory_order_relaxed)) < n;) {
      try {
        body(i);
      } catch (...) {
        std::lock_guard lock(error_mutex);
        if (!error) error = std::current_exception();
        failed.store(true, std::memory_order_relaxed);
      }
    }
  };
  std::vector<std::thread> helpers;
  for (std::size_t t = 1; t < std::min(threads, n); ++t) {
    try {
      helpers.emplace_back(work);
    } catch (const std::system_error&) {
      break;  // no more threads: the ones we have finish the work
    }
  }
  work();
  for (auto& h : helpers) h.join();
  if (error) std::rethrow_exception(error);
}

// The caller's side of reduce_by_key: collects every replica's keyed_partial (or, ordered, every
// batch's, in source order) and merges them partition by partition with combine, in that order,
// so an associative but non-commutative combine is respected per key. merge(total&, partial&&)
// applies the user's combine.
template <class K, class V, class Hash, class Merge>
class keyed_collector final : public typed_collector<keyed_result<K, V, Hash>> {
 public:
  using piece = keyed_piece<K, V>;
  using table = flat_table<K, V, Hash>;
  using entries = typename table::entry_vector;

  // `switch_keys`: the stage's pre_aggregate setting (for the note).
  keyed_collector(Merge merge, bool ordered, std::uint64_t switch_keys = pre_aggregate::default_switch_keys)
      : merge_(std::move(merge)), ordered_(ordered), switch_keys_(switch_keys), arrived_(keyed_partition_count),
        merged_(keyed_partition_count) {}

  // Files each piece under its partition: in arrival order when ordered (batches arrive in source
  // order), else by replica index (batch.meta.seq) so that the merge order does not depend on timing.
  // A piece a switched replica sent early is merged into its partition as it comes (holding it
  // until the end would hold every key once per replica again), by the merge thread that owns the
  // partition: the shuffle's owners, merging in parallel while the caller drains the rings.
  void consume(const batch_view& batch) override {
    decode_items(batch, scratch_);
    for (auto& p : scratch_) {
      observe(p);
      if (p.mode == aggregation_mode::shuffled && !ordered_) {
        const std::size_t weight = p.entries.size();
        shuffle_mergers().post(p.partition, std::move(p.entries), weight);
      } else if (ordered_) {
        arrived_[p.partition].push_back(std::move(p.entries));
      } else {
        pending_.emplace(batch.meta.seq, std::move(p));
      }
    }
    scratch_.clear();
  }

  void finish() override {
    if (shuffle_mergers_) {
      shuffle_mergers_->join();
      shuffle_mergers_.reset();
    }
    for (auto& [replica, p] : pending_) arrived_[p.partition].push_back(std::move(p.entries));
    pending_.clear();
    parallel_for_index(keyed_partition_count, merge_threads(), [&](std::size_t part) {
      table_memory::arena_scope huge_pages;  // the result's tables on huge pages
      merge_partition(part, merged_[part]);
    });
    arrived_.assign(keyed_partition_count, {});
    keys_ = 0;
    for (const auto& t : merged_) keys_ += t.size();
    result_ = keyed_result<K, V, Hash>(std::move(merged_));
    merged_.assign(keyed_partition_count, table{});
  }

  keyed_result<K, V, Hash> take() override { return std::move(result_); }

  bool keyed() const noexcept override { return true; }
  std::vector<result_collector::encoded_partition> take_partitions() override {
    std::vector<result_collector::encoded_partition> out;
    auto parts = std::move(result_).take_partitions();
    for (std::size_t part = 0; part < parts.size(); ++part) {
      if (parts[part].empty()) continue;
      const piece p{static_cast<std::uint32_t>(part), aggregation_mode::pre_aggregated, 0, 0, std::move(parts[part].entries())};
      parts[part] = table{};
      out.push_back({p.partition, encode_to_bytes(p)});
    }
    return out;
  }

  // Which way the replicas aggregated, and why (the stage's note in the report).
  std::string note() const override {
    const std::string seen = " (" + std::to_string(keys_) + " distinct keys; " + std::to_string(groups_received_) +
                             " groups received in " + std::to_string(pieces_) + " pieces)";
    if (key_partitioned_)
      return "aggregation: keyed dispatch, each replica owns its keys" + seen;
    if (switched_ == 0) {
      std::string why = switch_keys_ == pre_aggregate::never
                            ? "pre_aggregate::always()"
                            : "no replica's partial reached " + std::to_string(switch_keys_) + " distinct keys at under 2 items a key";
      return "aggregation: pre-aggregated in each replica, " + why + seen;
    }
    std::string why = switch_keys_ == 0 ? "pre_aggregate::off()"
                                        : "a partial held " + std::to_string(switch_at_keys_) + " distinct keys after " +
                                              std::to_string(switch_at_items_) + " items, under 2 items a key (threshold " +
                                              std::to_string(switch_keys_) + " keys)";
    return "aggregation: switched to partitioned shuffle in " + std::to_string(switched_) +
           (switched_ == 1 ? " replica" : " replicas") + ", partitions sent early and merged by the caller as they came: " +
           why + seen;
  }

 private:
  void observe(const piece& p) noexcept {
    ++pieces_;
    groups_received_ += p.entries.size();
    if (p.mode == aggregation_mode::key_partitioned) key_partitioned_ = true;
    if (p.mode == aggregation_mode::shuffled && p.items_at_switch != 0) {  // the replica's first piece after its switch
      ++switched_;
      if (p.keys_at_switch > switch_at_keys_) {
        switch_at_keys_ = p.keys_at_switch;
        switch_at_items_ = p.items_at_switch;
      }
    }
  }

  static std::size_t merge_threads() noexcept { return std::max(1u, std::min(4u, std::thread::hardware_concurrency())); }

  // Started at the first shuffled piece: a run that pre-aggregates starts no thread before finish().
  partition_workers<entries, Merge>& shuffle_mergers() {
    if (!shuffle_mergers_) {
      // At most 4 spill tables' worth queued per thread (about 4 MiB of 16-byte entries); a copy
      // of the merge per thread: combine may keep state.
      shuffle_mergers_ = std::make_unique<partition_workers<entries, Merge>>(
          merge_threads(), 4 * aggregation_switch::shuffle_table_keys, [this](std::size_t) { return merge_; },
          [this](Merge& merge, std::size_t part, entries& source) {
            table_memory::arena_scope huge_pages;  // the merged tables grow on huge pages
            merge_entries(merged_[part], source, merge);
          });
    }
    return *shuffle_mergers_;
  }

  // Folds `source` into `total` with merge (absent keys appended), leaving `source` moved from.
  // A window of hashes first, their index slots prefetched, then the probes (as the replicas
  // fold): the misses of a large partition overlap.
  static void merge_entries(table& total, entries& source, Merge& merge) {
    constexpr std::size_t window = 16;
    std::array<std::uint64_t, window> hashes;
    for (std::size_t base = 0; base < source.size(); base += window) {
      const std::size_t m = std::min(window, source.size() - base);
      for (std::size_t j = 0; j < m; ++j) {
        hashes[j] = table::hash_of(source[base + j].first);
        total.prefetch(hashes[j]);
      }
      for (std::size_t j = 0; j < m; ++j) {
        auto& e = source[base + j];
        if (auto* t = total.find(e.first, hashes[j])) {
          merge(t->second, std::move(e.second));
        } else {
          total.insert_new(std::move(e), hashes[j]);
        }
      }
    }
  }

  // The pieces of partition `part`, in order, into `total` (which may hold what shuffled pieces
  // brought already): the first adopted as is (its index rebuilt) when `total` is empty, the
  // others folded in with combine. With keyed dispatch one piece has it all.
  void merge_partition(std::size_t part, table& total) {
    Merge merge = merge_;  // a copy per thread: combine may keep state
    for (auto& source : arrived_[part]) {
      if (source.empty()) continue;
      if (total.empty()) {
        total.entries() = std::move(source);
        total.rebuild_after_decode();
        continue;
      }
      merge_entries(total, source, merge);
      entries().swap(source);  // free as we go
    }
  }

  Merge merge_;
  bool ordered_;
  std::uint64_t switch_keys_;
  // What arrived (for note()): pieces, their entries, replicas that switched and the largest
  // partial seen at a switch, whether the input was dispatched by key; keys in the result.
  std::uint64_t pieces_ = 0;
  std::uint64_t groups_received_ = 0;
  std::uint64_t switched_ = 0;
  std::uint64_t switch_at_keys_ = 0;
  std::uint64_t switch_at_items_ = 0;
  bool key_partitioned_ = false;
  std::uint64_t keys_ = 0;
  std::vector<piece> scratch_;
  std::vector<std::vector<entries>> arrived_;  // per partition, its pieces in merge order
  std::multimap<std::uint64_t, piece> pending_;
  std::vector<table> merged_;  // per partition: the shuffled pieces merged so far, then the result
  std::unique_ptr<partition_workers<entries, Merge>> shuffle_mergers_;  // last: joined before the tables go
  keyed_result<K, V, Hash> result_;
};

}  // namespace detail
}  // namespace procflow
