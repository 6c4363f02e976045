// The type-erased stage interfaces the runtime (lib/runtime) drives, and the helpers typed
// stages use to move items between std::vector batches and ports.
//
// A declared stage is an immutable stage_base shared by every copy of the pipeline. In each
// replica process the runtime asks it for a stage_instance (buffers, accumulators) and runs
// batches through it: decode -> apply -> hand over to the next fused stage -> encode for the
// next process group. Per-item work happens inside the typed templates; the runtime only makes
// one virtual call per stage per batch.
#pragma once

#include <procflow/codec.hpp>
#include <procflow/detail/port.hpp>
#include <procflow/detail/prefault.hpp>
#include <procflow/options.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <new>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

namespace procflow::detail {

enum class stage_kind : std::uint8_t { source, map, filter, flat_map, reduce, reduce_by_key, collect, sink };

constexpr const char* kind_name(stage_kind k) noexcept {
  switch (k) {
    case stage_kind::source: return "source";
    case stage_kind::map: return "map";
    case stage_kind::filter: return "filter";
    case stage_kind::flat_map: return "flat_map";
    case stage_kind::reduce: return "reduce";
    case stage_kind::reduce_by_key: return "reduce_by_key";
    case stage_kind::collect: return "collect";
    case stage_kind::sink: return "sink";
  }
  return "?";
}

// What to do with an item whose stage function threw (the stage's error_policy, applied by
// the replica's runtime, which also counts and records).
enum class item_verdict : std::uint8_t { fail, retry, skip };
class item_guard {
 public:
  virtual ~item_guard() = default;
  // Called inside the catch block for item `index` after its `attempt`-th try (0: the first);
  // may sleep (the retry backoff).
  virtual item_verdict on_failure(std::size_t index, std::uint32_t attempt) noexcept = 0;
  // Called before each item's first try (pf::restart names the item a replica dies on with it).
  virtual void on_item(std::size_t /*index*/) noexcept {}
};

// Filled by a stage when user code throws: the index of the failing item in the stage's input.
// `guard`: null for the policy fail (the plain loop); else consulted on each failing item.
struct item_cursor {
  std::size_t index = 0;
  item_guard* guard = nullptr;
  std::size_t skipped = 0;  // items skipped in this call of apply()
};

// How an input item was kept for a dead letter (dead_letter.hpp): its encoding, with the stage's
// input codec, written into the room the runtime set aside.
enum class item_keeping : std::uint8_t { unknown, kept, too_large, consumed };
struct kept_item {
  item_keeping state = item_keeping::unknown;
  std::uint64_t bytes = 0;  // the size of the encoding (unknown, consumed: 0)
};

// Encodes `item` into `room` when it fits. `intact`: false when the stage function consumed it.
template <class T>
kept_item keep_item(const T& item, bool intact, std::span<std::byte> room) noexcept {
  if (!intact) return {item_keeping::consumed, 0};
  if constexpr (encodable<T>) {
    const std::size_t n = codec<T>::encoded_size(item);
    if (n > room.size()) return {item_keeping::too_large, n};
    if (n != 0) codec<T>::encode(item, room.data());
    return {item_keeping::kept, n};
  } else {
    return {};
  }
}

// Calls a stage function under an error policy: the item stays in its buffer, whole, for a retry
// and for a dead letter. Passed as const T& when the function takes that (a by-value parameter
// then copies it), else as T&, else (a function taking T&& only) a copy is moved in; a type that
// cannot be copied is moved in (call_keeps_item_v is then false).
template <class F, class T>
inline constexpr bool call_keeps_item_v =
    std::is_invocable_v<F&, const T&> || std::is_invocable_v<F&, T&> || std::is_copy_constructible_v<T>;

template <class F, class T>
decltype(auto) call_keeping_item(F& fn, T& item) {
  if constexpr (std::is_invocable_v<F&, const T&>) {
    return std::invoke(fn, std::as_const(item));
  } else if constexpr (std::is_invocable_v<F&, T&>) {
    return std::invoke(fn, item);
  } else if constexpr (std::is_copy_constructible_v<T>) {
    return std::invoke(fn, T(item));
  } else {
    return std::invoke(fn, std::move(item));
  }
}

// What a stage can hand a full output buffer to in the middle of its batch (the replica's
// runtime: the rest of the fused chain, then the port). See stage_instance::spill().
class downstream {
 public:
  virtual ~downstream() = default;
  // Sends instance `position`'s output buffer on and leaves it empty. May block (back-pressure).
  virtual void spill(std::size_t position) = 0;
};

// Output items a stage gathers before it spills them (one slot's worth of small items).
template <class T>
inline constexpr std::size_t spill_items_v = std::clamp<std::size_t>(65536 / sizeof(T), 64, 8192);

// Per-replica state of one non-source stage.
class stage_instance {
 public:
  virtual ~stage_instance() = default;
  // Where a stage that produces many items per input (flat_map) spills full output buffers.
  void attach(downstream* d, std::size_t position) noexcept {
    downstream_ = d;
    position_ = position;
  }
  // Items in the output buffer / empties it (after a spill).
  virtual std::size_t output_size() const noexcept { return 0; }
  virtual void clear_output() noexcept {}
  // Decodes `batch` into this stage's input buffer; returns the item count.
  virtual std::size_t decode(const batch_view& batch) = 0;
  // The fused source fill (source_base::fill_into): a stage that can compute its input items from
  // their index takes the items `first + i` (i < n, of the type `item`) instead of a filled input
  // buffer, and its next apply() computes each item in its own loop: one pass fewer per chunk.
  // Returns false (the default) when it cannot; the caller then fills the input buffer.
  virtual bool take_index_range(const std::type_info& /*item*/, const void* /*first*/, std::size_t /*n*/) noexcept {
    return false;
  }
  // Runs the stage over its input buffer. Returns the number of items produced (terminals: 0).
  // On an exception from user code, sets cursor.index to the failing item and rethrows.
  virtual std::size_t apply(item_cursor& cursor) = 0;
  // Moves this stage's output into `next`'s input buffer (fused stages; same item type).
  virtual void hand_over(stage_instance& next) = 0;
  // Pointer to this stage's input buffer (a std::vector of the stage's input type).
  virtual void* input_buffer() noexcept = 0;
  // Pointer to this stage's output buffer (a std::vector of its output type; terminals: null).
  virtual void* output_buffer() noexcept = 0;
  // Under pf::skip, right after input item `index` failed for good: its encoding (this stage's
  // input codec) into `room` for the dead letter, when it fits.
  virtual kept_item keep_input_item(std::size_t /*index*/, std::span<std::byte> /*room*/) const noexcept { return {}; }

  // Terminals only. Ordered runs fold each source batch separately and emit one partial per
  // batch at end_batch(); unordered runs emit one partial per replica at finish().
  virtual void begin_batch() {}
  virtual void end_batch(output_port& /*results*/) {}
  virtual void finish(output_port& /*results*/) {}
  // Unordered runs in processes: after each batch, a terminal may send part of its partial early
  // (reduce_by_key once pre-aggregation stops paying). `key_partitioned`: its input is dispatched
  // by key (each replica owns its keys already).
  virtual void after_batch(output_port& /*results*/, bool /*key_partitioned*/) {}
  // Under pf::restart, after each batch and before its input is released: what the batch did is
  // made to last (a sink callable's flush()), so that a death after the release loses none of it.
  virtual void settle() {}
  // The replica's input has ended: the stage callable's finish(), if any, then its destruction
  // (detail/callable.hpp), before the replica's end of stream goes downstream. Throws on failure.
  virtual void end_of_stream() {}

 protected:
  downstream* downstream_ = nullptr;  // null: no spilling (output grows with the batch)
  std::size_t position_ = 0;
};

// A monotonic clock in ns that is cheap to read per item (an atomic load: a thread-mode run pulling
// a generator keeps it current to a quarter of the latency bound). Defined in lib/threads.
std::int64_t coarse_clock_ns() noexcept;

// A source: produces every item into `out` (its own process), or, when splittable, the items
// [first, last) of its range (fused into the next stage's replicas, which claim chunks).
class source_base {
 public:
  virtual ~source_base() = default;
  virtual void produce(output_port& out) const = 0;
  // Splittable sources (a range, a vector) know their size and can fill an input buffer
  // directly with items [first, last) — no ring between source and first stage.
  virtual bool splittable() const noexcept { return false; }
  virtual std::uint64_t size() const noexcept { return 0; }
  virtual void fill(std::uint64_t /*first*/, std::uint64_t /*last*/, void* /*vector*/) const {}
  // Fills units [first, last) and returns how many items that gave. A unit is one item for a
  // range or a vector; a file reader's unit is a block of bytes holding any number of items.
  virtual std::size_t fill_items(std::uint64_t first, std::uint64_t last, void* vector) const {
    fill(first, last, vector);
    return static_cast<std::size_t>(last - first);
  }
  // fill_items() into the first stage's input buffer, or, for a source whose item i is its
  // first item + i (pf::iota), offered to that stage to compute (stage_instance::take_index_range).
  virtual std::size_t fill_into(std::uint64_t first, std::uint64_t last, stage_instance& stage) const {
    return fill_items(first, last, stage.input_buffer());
  }
  // Called once per run, in the calling process (on each MPI rank), before any replica starts: a
  // file reader makes its reject file here, under the name the rank it runs on gives it.
  virtual void begin_run() const {}
  // Units per claimed chunk this source prefers (0: the runtime sizes chunks for balance).
  virtual std::uint64_t preferred_chunk_units() const noexcept { return 0; }
  // True when unit i is item i of the stream (item positions in errors are then source positions).
  virtual bool units_are_items() const noexcept { return true; }
  // A splittable source whose size is only a bound (items arriving from elsewhere, lib/mpi): true
  // once a fill_items() that gave no items found the source ended, so its claimers stop claiming.
  virtual bool ended() const noexcept { return false; }
  // Decodes a batch of this source's own encoded items into `vector` (a batch_buffer of its item
  // type); returns the item count. For a transport that carries them elsewhere (lib/mpi).
  virtual std::size_t decode_batch(const batch_view& /*batch*/, void* /*vector*/) const {
    throw std::logic_error("procflow: this source cannot decode its batches");
  }
  // For a process that produces only part of a splittable source (lib/mpi: a rank's share, in a
  // process of its own): encodes the items of units [first, last) into `out`.
  virtual void produce_units(output_port& /*out*/, std::uint64_t /*first*/, std::uint64_t /*last*/) const {
    throw std::logic_error("procflow: this source cannot produce a range of its units");
  }
  // The same for batches of this source's own encoded items arriving from elsewhere (lib/mpi):
  // `next` fills in the next batch (false: no more), which is decoded and encoded again into
  // `out`, through one item buffer for them all.
  virtual void produce_batches(output_port& /*out*/, const std::function<bool(batch_view&)>& /*next*/) const {
    throw std::logic_error("procflow: this source cannot decode its batches");
  }
  // Thread mode, sources that are not splittable (a generator): replaces `vector`'s content by
  // the next items, at most `max`, returning early once coarse_clock_ns() has reached
  // `deadline_ns` with at least one item (a slow stream still flows). Returns the item count: 0
  // once the stream has ended.
  // A copy with its own generator state (null when the source cannot be copied).
  virtual std::shared_ptr<const source_base> fresh_copy() const { return nullptr; }
  virtual std::size_t pull(void* /*vector*/, std::size_t /*max*/, std::int64_t /*deadline_ns*/) const {
    return 0;
  }
};

// Supervisor side of a terminal: turns what the last processes send into the run's value.
class result_collector {
 public:
  virtual ~result_collector() = default;
  virtual void consume(const batch_view& batch) = 0;
  // Thread mode: the terminal's input items themselves (a batch_buffer of its input type), moved
  // from; collect and a sink running in the caller take them without encoding.
  virtual void consume_items(void* /*vector*/) { throw std::logic_error("procflow: this terminal takes encoded batches only"); }
  // Before the first consume: `items` items will arrive (the source's size, when every stage
  // before this terminal passes its items on one for one and none may skip one), so collect() can
  // size its result once rather than double it page by page. A hint: a failed run brings fewer.
  virtual void expect_items(std::uint64_t /*items*/) {}
  virtual void finish() {}
  // After finish(): what the terminal's report note should say about how it ran (else empty).
  virtual std::string note() const { return {}; }
  // True while somebody waits for results the pipeline still owes (a pool's pending requests):
  // the thread reading the results channel may then spin briefly on an idle core instead of
  // sleeping, so an answer does not wait for that thread's wake-up. Called often; keep it cheap.
  virtual bool awaited() const noexcept { return false; }
  // A keyed terminal (reduce_by_key), after finish(): its groups moved out as one encoded item per
  // non-empty partition, which a collector of the same terminal consume()s (a batch of that one
  // item) to merge them with others. procflow::mpi sends each to the rank that owns its partition.
  // keyed() is false, and take_partitions() empty, for every other terminal.
  struct encoded_partition {
    std::uint32_t partition = 0;
    std::vector<std::byte> item;
  };
  virtual bool keyed() const noexcept { return false; }
  virtual std::vector<encoded_partition> take_partitions() { return {}; }
};

// A collector that hands every call on to another; a wrapper overrides only what it adds.
// Every virtual of result_collector is forwarded here: add a new one here too.
class forwarding_collector : public result_collector {
 public:
  explicit forwarding_collector(result_collector& inner) : inner_(&inner) {}
  void consume(const batch_view& batch) override { inner_->consume(batch); }
  void consume_items(void* vector) override { inner_->consume_items(vector); }
  void expect_items(std::uint64_t items) override { inner_->expect_items(items); }
  void finish() override { inner_->finish(); }
  std::string note() const override { return inner_->note(); }
  bool awaited() const noexcept override { return inner_->awaited(); }
  bool keyed() const noexcept override { return inner_->keyed(); }
  std::vector<encoded_partition> take_partitions() override { return inner_->take_partitions(); }

 protected:
  result_collector& inner() const noexcept { return *inner_; }

 private:
  result_collector* inner_;
};

// A collector whose finished result the builder's run() takes.
template <class R>
class typed_collector : public result_collector {
 public:
  virtual R take() = 0;
};

class stage_base {
 public:
  stage_base(std::string name, stage_kind kind, stage_options options)
      : name_(std::move(name)), kind_(kind), options_(options) {}
  virtual ~stage_base() = default;
  // Every virtual below is forwarded by forwarding_stage (forwarding_stage.hpp): add a new one
  // there too, and to forwarding_stage_test.

  const std::string& name() const noexcept { return name_; }
  stage_kind kind() const noexcept { return kind_; }
  const stage_options& options() const noexcept { return options_; }
  bool is_terminal() const noexcept { return kind_ >= stage_kind::reduce; }
  // True for stages whose output items are their input items one for one (maps): a failing
  // item's source position is then still known.
  bool one_to_one() const noexcept { return kind_ == stage_kind::map; }

  // True when the stage's callable holds state (cannot be called as const, and is not made per
  // replica by a factory): it does not inherit the previous stage's replica count.
  virtual bool holds_state() const noexcept { return false; }
  // Sources only.
  virtual const source_base* source() const noexcept { return nullptr; }
  // Everything else: per-replica state.
  // `ordered`: terminals fold per source batch (see stage_instance::begin_batch).
  virtual std::unique_ptr<stage_instance> instantiate(bool /*ordered*/) const { return nullptr; }
  // Encodes a std::vector of this stage's *input* type (what the previous stage produced) into
  // a port. `keyed`: the port dispatches by key hash (reduce_by_key in its own processes).
  virtual void encode_input(void* /*vector*/, output_port& /*out*/, bool /*keyed*/) const {}
  // Thread mode (items move by value): a new empty batch_buffer of this stage's input type, and
  // swapping two of them (returns the size of what `into` holds afterwards).
  virtual std::shared_ptr<void> new_input_buffer() const { return nullptr; }
  virtual std::size_t swap_input_buffers(void* /*from*/, void* /*into*/) const { return 0; }
  virtual std::size_t input_buffer_size(const void* /*buffer*/) const { return 0; }
  // Terminals with a value (reduce, reduce_by_key, collect): the supervisor side.
  virtual std::unique_ptr<result_collector> make_collector(bool /*ordered*/) const { return nullptr; }
  // True when the stage runs in the process that called run(), fed by the results channel:
  // collect, and a sink without replicas(n > 1) or own_process (so that what its callable
  // captured by reference from the caller is the caller's).
  bool runs_in_supervisor() const noexcept {
    return kind_ == stage_kind::collect ||
           (kind_ == stage_kind::sink && !options_.own_process && !(options_.replicas && *options_.replicas > 1));
  }

 private:
  std::string name_;
  stage_kind kind_;
  stage_options options_;
};

// ------------------------------------------------------------------ batch buffers

// Allocator whose default construction leaves trivial types uninitialized: growing a stage's
// reused batch buffer (resize) then costs no zero-filling pass over memory it is about to overwrite.
// A large block is mapped in one call (prefault.hpp): a batch buffer is filled end to end at once,
// and its first fill in a fresh replica otherwise took one page fault per 4 KiB.
template <class T>
struct default_init_allocator : std::allocator<T> {
  template <class U>
  struct rebind {
    using other = default_init_allocator<U>;
  };
  default_init_allocator() noexcept = default;
  template <class U>
  default_init_allocator(const default_init_allocator<U>&) noexcept {}
  T* allocate(std::size_t n) {
    T* p = std::allocator<T>::allocate(n);
    prefault_large(p, n * sizeof(T));
    return p;
  }
  template <class U>
  void construct(U* p) noexcept(std::is_nothrow_default_constructible_v<U>) {
    ::new (static_cast<void*>(p)) U;
  }
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

// The item buffer every stage reads and writes a batch through (the runtime passes them around
// as void*: a stage's input buffer is always a batch_buffer of its input type).
template <class T>
using batch_buffer = std::vector<T, default_init_allocator<T>>;

// ------------------------------------------------------------------ item <-> bytes helpers

// Codecs whose encoding is a short head followed by the object's own bytes (std::string, a
// std::vector of raw elements): a large item goes from the object straight into the slots.
template <class T>
concept head_and_body_codec = requires(const T& value, std::byte* out) {
  { codec<T>::encode_head(value, out) } -> std::same_as<std::byte*>;
  { codec<T>::body(value) } -> std::same_as<std::span<const std::byte>>;
};
// Codecs that decode into an existing object, reusing what it owns (a string's capacity).
template <class T>
concept decodes_into = std::is_default_constructible_v<T> && requires(decoder& in, T& value) { codec<T>::decode_into(in, value); };

// An item larger than a slot: its encoding is copied slot by slot (write_large). Raw items and
// head-and-body encodings go straight from the object, so the item's bytes are copied once on
// the producer's side; others are encoded into a buffer kept for the next large item, so a
// stream of large items costs no allocation, zero-filling or page faults per item.
template <encodable T>
void encode_large(const T& item, std::size_t n, output_port& out, std::size_t lane) {
  if constexpr (is_raw_codec_v<T>) {
    out.write_large(lane, {reinterpret_cast<const std::byte*>(&item), sizeof(T)});
  } else if constexpr (head_and_body_codec<T>) {
    std::byte head[16];  // a varint: at most 10 bytes
    const std::byte* head_end = codec<T>::encode_head(item, head);
    const std::span<const std::byte> parts[] = {{head, head_end}, codec<T>::body(item)};
    out.write_large_parts(lane, parts);
  } else {
    static thread_local batch_buffer<std::byte> buffer;
    buffer.resize(n);
    codec<T>::encode(item, buffer.data());
    out.write_large(lane, {buffer.data(), n});
    // Keep at most 128 MiB between items: one huge item does not pin its size for the rest of
    // the run, and a stream of 64 MiB items (plus their heads) keeps its buffer.
    if (buffer.capacity() > (std::size_t{128} << 20)) batch_buffer<std::byte>().swap(buffer);
  }
}

// Encodes one item into the port (split over slots if it is larger than one).
template <encodable T>
void encode_item(const T& item, output_port& out, std::size_t lane = output_port::any_lane) {
  const std::size_t n = codec<T>::encoded_size(item);
  if (n > out.max_item_bytes()) {
    encode_large(item, n, out, lane);
    return;
  }
  if (lane == output_port::any_lane) {
    codec<T>::encode(item, out.reserve(n));
    out.commit(n);
  } else {
    codec<T>::encode(item, out.reserve_lane(lane, n));
    out.commit_lane(lane, n);
  }
}

// Encodes a batch of items. Items whose codec in force is the raw codec (is_raw_codec_v: numbers,
// enums, raw PROCFLOW_CODEC structs; never a user's own codec) are copied slot-sized at a time.
template <encodable T, class Alloc>
void encode_items(const std::vector<T, Alloc>& items, output_port& out) {
  if constexpr (is_raw_codec_v<T>) {
    static_assert(sizeof(T) > 0);
    if (sizeof(T) > out.max_item_bytes()) {  // each item needs several slots
      for (const T& item : items) encode_item(item, out);
      return;
    }
    std::size_t done = 0;
    while (done < items.size()) {
      const std::span<std::byte> room = out.reserve_bulk(sizeof(T));
      const std::size_t fit = std::min(items.size() - done, room.size() / sizeof(T));
      std::memcpy(room.data(), items.data() + done, fit * sizeof(T));
      out.commit_bulk(fit * sizeof(T), static_cast<std::uint32_t>(fit));
      done += fit;
    }
  } else {
    for (const T& item : items) encode_item(item, out);
  }
}

// A head-and-body codec whose body can be written in place: a large item is read from the slots
// straight into the object (decode_large_item).
template <class T>
concept streams_into = decodes_into<T> && head_and_body_codec<T> && requires(T& value, std::size_t n) {
  { codec<T>::resize_body(value, n) } -> std::same_as<std::span<std::byte>>;
  { codec<T>::body_unit } -> std::convertible_to<std::size_t>;
};

template <encodable T, class Alloc>
std::size_t decode_items(const batch_view& batch, std::vector<T, Alloc>& items);

// One item larger than a slot, streamed by the input port (batch_view::large). A head-and-body
// item is read straight into the buffer's first object (its memory reused from the previous
// item): its bytes are copied once on the consumer's side. Others are read into a buffer kept
// for the next large item, then decoded.
template <encodable T, class Alloc>
std::size_t decode_large_item(large_item_reader& in, std::vector<T, Alloc>& items) {
  const std::uint64_t total = in.size();
  if constexpr (streams_into<T>) {
    std::uint64_t count = 0;
    std::uint64_t head = 0;
    for (unsigned shift = 0;; shift += 7) {
      if (shift >= 64 || head >= total) throw codec_error("codec: malformed varint at the start of a large item");
      std::byte b;
      in.read(&b, 1);
      ++head;
      count |= static_cast<std::uint64_t>(std::to_integer<std::uint8_t>(b) & 0x7f) << shift;
      if ((std::to_integer<std::uint8_t>(b) & 0x80) == 0) break;
    }
    // The body is the rest of the item, exactly: checked before anything is sized by `count`.
    constexpr std::uint64_t unit = codec<T>::body_unit;
    const std::uint64_t body = total - head;
    if (body % unit != 0 || count != body / unit)
      throw codec_error("large item of " + std::to_string(total) + " bytes claims " + std::to_string(count) + " elements of " +
                        std::to_string(unit) + " bytes");
    items.resize(1);
    const std::span<std::byte> to = codec<T>::resize_body(items.front(), static_cast<std::size_t>(count));
    if (!to.empty()) in.read(to.data(), to.size());
    return 1;
  } else {
    static thread_local batch_buffer<std::byte> buffer;
    buffer.resize(static_cast<std::size_t>(total));
    in.read(buffer.data(), buffer.size());
    batch_view whole;
    whole.bytes = {buffer.data(), buffer.size()};
    whole.items = 1;
    const std::size_t n = decode_items(whole, items);
    if (buffer.capacity() > (std::size_t{128} << 20)) batch_buffer<std::byte>().swap(buffer);
    return n;
  }
}

// Decodes a batch into `items` (cleared first). Throws codec_error on corrupt input.
template <encodable T, class Alloc>
std::size_t decode_items(const batch_view& batch, std::vector<T, Alloc>& items) {
  if (batch.large) return decode_large_item(*batch.large, items);
  if constexpr (decodes_into<T>) {
    if (batch.items == 1) {
      // One item (an item larger than a slot always comes alone): decoded into the object the
      // previous batch left first in the buffer, so a stream of large strings reuses one
      // string's memory instead of allocating (and page-faulting) a fresh one per item.
      items.resize(1);
      decoder in(batch.bytes);
      codec<T>::decode_into(in, items.front());
      if (!in.empty()) throw codec_error("batch has " + std::to_string(in.remaining()) + " bytes after its last item");
      return 1;
    }
  }
  items.clear();
  if constexpr (is_raw_codec_v<T> && std::is_default_constructible_v<T>) {
    if (batch.bytes.size() != std::size_t{batch.items} * sizeof(T))
      throw codec_error("batch of " + std::to_string(batch.items) + " fixed-size items has " +
                        std::to_string(batch.bytes.size()) + " bytes");
    items.resize(batch.items);
    if (batch.items) std::memcpy(items.data(), batch.bytes.data(), batch.bytes.size());
  } else {
    decoder in(batch.bytes);
    // The count was validated against the slot's capacity; reserve no more than the bytes can
    // justify (zero-byte items grow the buffer as they decode).
    items.reserve(std::min<std::size_t>(batch.items, batch.bytes.size()));
    for (std::uint32_t i = 0; i < batch.items; ++i) items.push_back(codec<T>::decode(in));
    if (!in.empty()) throw codec_error("batch has " + std::to_string(in.remaining()) + " bytes after its last item");
  }
  return items.size();
}

}  // namespace procflow::detail
