// A wrapper stage (key_by's keyed_input_stage) is the stage it wraps with one behaviour changed:
// every other stage_base virtual must reach the wrapped stage. Thread mode once lost every item of
// a key_by stage because a new virtual kept its silent default in the wrapper. Each case calls one
// virtual through the wrapper and checks that the probe underneath answered. The same for
// forwarding_collector (a started pipeline's answers' clock wraps the caller's collector).
#include <procflow/detail/forwarding_stage.hpp>
#include <procflow/detail/keyed_stage.hpp>

#include <doctest/doctest.h>

#include <memory>
#include <stdexcept>
#include <string>

namespace pf = procflow;
using namespace procflow::detail;

namespace {

struct probe_source final : source_base {
  void produce(output_port&) const override {}
};

struct probe_collector final : result_collector {
  void consume(const batch_view&) override {}
};

// A port nothing is written to: encode_input's destination, compared by address only.
struct null_port final : output_port {
  void write_large_parts(std::size_t, std::span<const std::span<const std::byte>>) override {}
  void begin_batch(const batch_meta&) override {}
  void end_batch() override {}
  void flush() override {}
  void close() override {}

 protected:
  std::byte* reserve_slow(std::size_t, std::size_t) override { throw std::logic_error("null_port"); }
};

// Answers every virtual with something no default answers, and records what it was given.
struct probe_stage final : stage_base {
  probe_stage() : stage_base("probe", stage_kind::map, pf::stage_options{}) {}

  bool holds_state() const noexcept override { return true; }
  const source_base* source() const noexcept override { return &src; }
  std::unique_ptr<stage_instance> instantiate(bool ordered) const override {
    instantiated_ordered = ordered;
    return nullptr;
  }
  void encode_input(void* vector, output_port& out, bool keyed) const override {
    encoded_vector = vector;
    encoded_port = &out;
    encoded_keyed = keyed;
  }
  std::shared_ptr<void> new_input_buffer() const override { return buffer; }
  std::size_t swap_input_buffers(void* from, void* into) const override {
    swapped_from = from;
    swapped_into = into;
    return 41;
  }
  std::size_t input_buffer_size(const void* b) const override { return b == buffer.get() ? 42 : 0; }
  std::unique_ptr<result_collector> make_collector(bool ordered) const override {
    collector_ordered = ordered;
    return std::make_unique<probe_collector>();
  }

  probe_source src;
  std::shared_ptr<void> buffer = std::make_shared<int>(7);
  mutable bool instantiated_ordered = false;
  mutable void* encoded_vector = nullptr;
  mutable output_port* encoded_port = nullptr;
  mutable bool encoded_keyed = true;
  mutable void* swapped_from = nullptr;
  mutable void* swapped_into = nullptr;
  mutable bool collector_ordered = false;
};

// Answers every result_collector virtual with something no default answers, and records it.
struct recording_collector final : result_collector {
  void consume(const batch_view& batch) override { consumed = &batch; }
  void consume_items(void* vector) override { items = vector; }
  void expect_items(std::uint64_t n) override { expected = n; }
  void finish() override { finished = true; }
  std::string note() const override { return "inner note"; }
  bool awaited() const noexcept override { return true; }

  const batch_view* consumed = nullptr;
  void* items = nullptr;
  std::uint64_t expected = 0;
  bool finished = false;
};

struct key_of_int {
  int operator()(const int& x) const { return x; }
};

}  // namespace

TEST_CASE("a key_by wrapper forwards every stage_base virtual but the keyed encoding") {
  auto probe = std::make_shared<probe_stage>();
  const keyed_input_stage<int, key_of_int> wrapper(probe, key_of_int{});
  const stage_base& s = wrapper;

  CHECK(s.name() == "probe");
  CHECK(s.kind() == stage_kind::map);
  CHECK(s.holds_state());
  CHECK(s.source() == &probe->src);

  CHECK(s.instantiate(true) == nullptr);
  CHECK(probe->instantiated_ordered);

  int vector = 0;
  null_port port;
  s.encode_input(&vector, port, false);  // unkeyed: the inner stage's encoding
  CHECK(probe->encoded_vector == &vector);
  CHECK(probe->encoded_port == &port);
  CHECK_FALSE(probe->encoded_keyed);

  CHECK(s.new_input_buffer() == probe->buffer);
  int a = 0, b = 0;
  CHECK(s.swap_input_buffers(&a, &b) == 41);
  CHECK(probe->swapped_from == &a);
  CHECK(probe->swapped_into == &b);
  CHECK(s.input_buffer_size(probe->buffer.get()) == 42);

  CHECK(s.make_collector(true) != nullptr);
  CHECK(probe->collector_ordered);
}

TEST_CASE("a forwarding_collector forwards every result_collector virtual") {
  recording_collector inner;
  forwarding_collector wrapper(inner);
  result_collector& c = wrapper;

  const batch_view batch;
  c.consume(batch);
  CHECK(inner.consumed == &batch);
  int vector = 0;
  c.consume_items(&vector);
  CHECK(inner.items == &vector);
  c.expect_items(42);
  CHECK(inner.expected == 42);
  c.finish();
  CHECK(inner.finished);
  CHECK(c.note() == "inner note");
  CHECK(c.awaited());
}
