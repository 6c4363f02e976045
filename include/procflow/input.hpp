// A source fed by the calling program itself, for a started pipeline (running.hpp):
//
//   auto job = pf::pipeline("p").source("in", pf::input<std::string>())
//                  .map("parse", parse, pf::replicas(2)).collect().start();
//   job.push(line);      // blocks while the rings in front of the first stage are full
//   job.try_push(line);  // never blocks: false when it would have to wait
//   job.close();         // end of stream
//
// No process runs this source: the caller's process writes the first ring itself, so the items
// can come from anything the program learns after start() (a socket, a queue, a GUI).
// A pipeline with this source can only be started, not run().
#pragma once

#include <procflow/codec.hpp>
#include <procflow/detail/stage.hpp>

#include <stdexcept>
#include <string>
#include <typeinfo>

namespace procflow {

template <class T>
struct input_source {
  using item_type = T;
};

// A source whose items the caller pushes into the started pipeline (see above).
template <class T>
input_source<T> input() {
  static_assert(detail::checked_encodable_v<T>, "procflow: input<T>(): T crosses a process boundary and needs procflow::codec<T>");
  return {};
}

namespace detail {

template <class S>
inline constexpr bool is_input_source_v = false;
template <class T>
inline constexpr bool is_input_source_v<input_source<T>> = true;

// The runtime's view of a caller-fed source: it encodes the caller's items into the first port.
class caller_source_base : public stage_base, public source_base {
 public:
  using stage_base::stage_base;
  const source_base* source() const noexcept override { return this; }
  // Never runs in a process of its own: the caller writes the port (runtime/started_run.cpp).
  void produce(output_port& /*out*/) const override {
    throw std::logic_error("procflow: source '" + name() + "' is fed by the caller: start() the pipeline and push() to it");
  }
  virtual const std::type_info& item_type() const noexcept = 0;
  // Encodes the item at `item` (an object of item_type()) into `out`.
  virtual void encode(const void* item, output_port& out) const = 0;
};

template <class T>
class caller_source_stage final : public caller_source_base {
 public:
  caller_source_stage(std::string name, stage_options options)
      : caller_source_base(std::move(name), stage_kind::source, options) {}
  const std::type_info& item_type() const noexcept override { return typeid(T); }
  void encode(const void* item, output_port& out) const override { encode_item(*static_cast<const T*>(item), out); }
};

}  // namespace detail
}  // namespace procflow
