#include "mpi/import_source.hpp"

#include <stdexcept>

namespace procflow::mpi_detail {

ImportSource::ImportSource(std::shared_ptr<const detail::stage_base> inner, const ImportInbox& inbox, bool ordered)
    : detail::stage_base(inner->name(), inner->kind(), inner->options()),
      inner_(std::move(inner)),
      source_(inner_->source()),
      inbox_(&inbox),
      ordered_(ordered) {}

void ImportSource::produce(detail::output_port& out) const {
  if (ordered_)
    throw std::logic_error(
        "procflow::mpi: under pf::ordered the stage after a generator must take its items across ranks directly, in its own "
        "replicas (remove fusion(false) from the pipeline and the source, and own_process from that stage)");
  std::uint64_t b = 0;
  bool holding = false;
  // Throws codec_error on a corrupt batch.
  source_->produce_batches(out, [&](detail::batch_view& view) {
    if (holding) inbox_->release(b++);  // the batch before was encoded into `out`
    const ImportInbox::Batch got = inbox_->wait_for(b);
    holding = !got.ended;
    if (got.ended) return false;
    view = {};
    view.bytes = got.bytes;
    view.items = got.items;
    view.batch_end = true;
    return true;
  });
}

std::size_t ImportSource::fill_items(std::uint64_t first, std::uint64_t /*last*/, void* vector) const {
  const ImportInbox::Batch b = inbox_->wait_for(first);
  if (b.ended) {
    ended_ = true;
    detail::batch_view none;
    return source_->decode_batch(none, vector);  // empties the buffer
  }
  detail::batch_view view;
  view.bytes = b.bytes;
  view.items = b.items;
  view.batch_end = true;
  const std::size_t n = source_->decode_batch(view, vector);  // throws codec_error on a corrupt batch
  inbox_->release(first);
  return n;
}

void ImportSource::fill(std::uint64_t first, std::uint64_t last, void* vector) const { fill_items(first, last, vector); }

}  // namespace procflow::mpi_detail
