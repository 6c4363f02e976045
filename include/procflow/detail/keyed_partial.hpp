// What a reduce_by_key replica sends to the caller (keyed_partial: its groups, radix-partitioned by
// the top bits of the mixed key hash, with a codec that copies raw K/Acc entries in bulk) and the
// caller's side (keyed_collector: merges the replicas' partials partition by partition, the
// partitions in parallel on a few threads that are joined before run() returns, and hands the
// partitions over as a keyed_result without rebuilding one map).
#pragma once

#include <procflow/codec.hpp>
#include <procflow/detail/flat_table.hpp>
#include <procflow/detail/stage.hpp>
#include <procflow/keyed.hpp>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <exception>
#include <map>
#include <mutex>
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
  void clear() noexcept {
    for (auto& p : parts) p.clear();
  }
};

// Entries of raw keys and accumulators without padding travel as one block per partition.
template <class K, class V>
inline constexpr bool raw_entries_v = is_raw_codec_v<K> && is_raw_codec_v<V> && std::is_trivially_copyable_v<keyed_entry<K, V>> &&
                                      sizeof(keyed_entry<K, V>) == sizeof(K) + sizeof(V);

}  // namespace detail

// Encoded: the partition count, then per partition its entry count and entries (a block of bytes
// for raw entries, key then accumulator otherwise). The index is rebuilt by the receiver.
template <class K, class V, class Hash>
struct codec<detail::keyed_partial<K, V, Hash>> {
  using partial = detail::keyed_partial<K, V, Hash>;
  using entry = keyed_entry<K, V>;
  static constexpr bool raw = detail::raw_entries_v<K, V>;

  static std::size_t encoded_size(const partial& p) noexcept {
    std::size_t n = detail::varint_size(p.parts.size());
    for (const auto& t : p.parts) {
      n += detail::varint_size(t.size());
      if constexpr (raw) {
        n += t.size() * sizeof(entry);
      } else {
        for (const auto& e : t) n += codec<K>::encoded_size(e.first) + codec<V>::encoded_size(e.second);
      }
    }
    return n;
  }
  static std::byte* encode(const partial& p, std::byte* out) noexcept {
    out = detail::put_varint(p.parts.size(), out);
    for (const auto& t : p.parts) {
      out = detail::put_varint(t.size(), out);
      if constexpr (raw) {
        if (!t.empty()) std::memcpy(out, t.begin(), t.size() * sizeof(entry));
        out += t.size() * sizeof(entry);
      } else {
        for (const auto& e : t) out = codec<V>::encode(e.second, codec<K>::encode(e.first, out));
      }
    }
    return out;
  }
  // Entries only: keyed_collector rebuilds each partition's index (in parallel) when it merges.
  static partial decode(decoder& in) {
    partial p;
    if (in.take_varint() != keyed_partition_count) throw codec_error("codec: keyed partial with a wrong partition count");
    for (auto& t : p.parts) {
      const std::size_t n = in.take_count();
      auto& entries = t.entries();
      if constexpr (raw) {
        const std::byte* bytes = in.take(n * sizeof(entry));  // n <= remaining, so no overflow
        entries.resize(n);
        if (n) std::memcpy(entries.data(), bytes, n * sizeof(entry));
      } else {
        entries.reserve(n);
        for (std::size_t i = 0; i < n; ++i) {
          K k = codec<K>::decode(in);
          V v = codec<V>::decode(in);
          entries.push_back(entry{std::move(k), std::move(v)});
        }
      }
    }
    return p;
  }
};

namespace detail {

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
  using partial = keyed_partial<K, V, Hash>;
  using table = flat_table<K, V, Hash>;

  keyed_collector(Merge merge, bool ordered) : merge_(std::move(merge)), ordered_(ordered) {}

  void consume(const batch_view& batch) override {
    decode_items(batch, scratch_);
    for (auto& p : scratch_) {
      if (ordered_) {
        arrived_.push_back(std::move(p));  // batches arrive in source order
      } else {
        pending_.emplace(batch.meta.seq, std::move(p));  // seq = replica index
      }
    }
    scratch_.clear();
  }

  void finish() override {
    for (auto& [replica, p] : pending_) arrived_.push_back(std::move(p));
    pending_.clear();
    std::vector<table> merged(keyed_partition_count);
    const std::size_t threads = std::max(1u, std::min(4u, std::thread::hardware_concurrency()));
    parallel_for_index(keyed_partition_count, threads, [&](std::size_t part) { merge_partition(part, merged[part]); });
    arrived_.clear();
    result_ = keyed_result<K, V, Hash>(std::move(merged));
  }

  keyed_result<K, V, Hash> take() override { return std::move(result_); }

 private:
  // Partition `part` of every partial, in arrival order: the first adopted as is (its index
  // rebuilt), the others folded in with combine. With keyed dispatch one partial has it all.
  void merge_partition(std::size_t part, table& total) {
    Merge merge = merge_;  // a copy per thread: combine may keep state
    for (auto& p : arrived_) {
      auto& source = p.parts[part].entries();
      if (source.empty()) continue;
      if (total.empty()) {
        total.entries() = std::move(source);
        total.rebuild_after_decode();
        continue;
      }
      for (auto& e : source) {
        const std::uint64_t h = table::hash_of(e.first);
        if (auto* t = total.find(e.first, h)) {
          merge(t->second, std::move(e.second));
        } else {
          total.insert_new(std::move(e), h);
        }
      }
      std::vector<keyed_entry<K, V>>().swap(source);  // free as we go
    }
  }

  Merge merge_;
  bool ordered_;
  std::vector<partial> scratch_;
  std::vector<partial> arrived_;
  std::multimap<std::uint64_t, partial> pending_;
  keyed_result<K, V, Hash> result_;
};

}  // namespace detail
}  // namespace procflow
