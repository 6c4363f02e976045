// forwarding_stage: a stage that is another stage with one behaviour changed (key_by's keyed
// encoding). It forwards every virtual of stage_base to the stage it wraps, so that a wrapper
// overrides only what it changes: a virtual added to stage_base with a default and not forwarded
// here would silently answer the default for every wrapped stage (that is how thread mode once
// lost every item of a key_by stage). Keep this list equal to stage_base's virtuals (stage.hpp
// says so beside them); tests/runtime/forwarding_stage_test.cpp calls each one through a wrapper.
#pragma once

#include <procflow/detail/stage.hpp>

#include <memory>
#include <utility>

namespace procflow::detail {

class forwarding_stage : public stage_base {
 public:
  explicit forwarding_stage(std::shared_ptr<const stage_base> inner)
      : stage_base(inner->name(), inner->kind(), inner->options()), inner_(std::move(inner)) {}

  bool holds_state() const noexcept override { return inner_->holds_state(); }
  const source_base* source() const noexcept override { return inner_->source(); }
  std::unique_ptr<stage_instance> instantiate(bool ordered) const override { return inner_->instantiate(ordered); }
  void encode_input(void* vector, output_port& out, bool keyed) const override { inner_->encode_input(vector, out, keyed); }
  std::shared_ptr<void> new_input_buffer() const override { return inner_->new_input_buffer(); }
  std::size_t swap_input_buffers(void* from, void* into) const override { return inner_->swap_input_buffers(from, into); }
  std::size_t input_buffer_size(const void* buffer) const override { return inner_->input_buffer_size(buffer); }
  std::unique_ptr<result_collector> make_collector(bool ordered) const override { return inner_->make_collector(ordered); }

  const stage_base& inner() const noexcept { return *inner_; }

 private:
  std::shared_ptr<const stage_base> inner_;
};

}  // namespace procflow::detail
