#include "reader.hpp"
#include "scan.hpp"

#include <procflow/error.hpp>
#include <procflow/stages/lines.hpp>

#include <memory>

namespace procflow::stages {
namespace detail {

// Sequential reading (stdin, gzip, or a pipeline without fusion): file after file.
class line_stream {
 public:
  line_stream(const input_set& input, const line_options& options) : input_(input), options_(options) {}

  std::optional<std::string> next() {
    for (;;) {
      if (!reader_) {
        if (file_ == input_.files().size()) return std::nullopt;
        reader_ = std::make_unique<Reader>(input_.files()[file_], 0, /*sequential=*/true);
        line_ = 0;
      }
      bool nl = false;
      Reader& r = *reader_;
      const std::size_t len = find_line(r, options_.max_line_bytes, nl, [&] {
        throw procflow::error(where(r.file(), r.offset(), line_ + 1) + ": line longer than " + std::to_string(options_.max_line_bytes) + " bytes");
      });
      if (len == std::string_view::npos) {
        reader_.reset();
        ++file_;
        continue;
      }
      std::string line(strip_cr(r.window().substr(0, len)));
      r.advance(len + (nl ? 1 : 0));
      ++line_;
      return line;
    }
  }

 private:
  const input_set& input_;
  line_options options_;
  std::size_t file_ = 0;
  std::unique_ptr<Reader> reader_;
  std::uint64_t line_ = 0;
};

}  // namespace detail

lines_source::lines_source(std::string input, line_options options)
    : input_(std::make_shared<const detail::input_set>(input, options.block_bytes)), options_(options) {}

std::size_t lines_source::fill(std::uint64_t first, std::uint64_t last, procflow::detail::batch_buffer<std::string>& out) const {
  // Items of the previous chunk are reused as storage: assigning into a string that has the
  // capacity already costs no allocation (a batch of lines allocates only while it grows).
  detail::size_fresh_batch(out, (last - first) * input_->block_bytes(), 32);
  std::size_t n = 0;
  detail::for_each_block(*input_, first, last, [&](detail::Reader& r, const detail::input_set::block& block) {
    while (r.offset() < block.end) {
      bool nl = false;
      const std::size_t len = detail::find_line(r, options_.max_line_bytes, nl, [&] {
        throw procflow::error(detail::where(r.file(), r.offset(), 0) + ": line longer than " +
                              std::to_string(options_.max_line_bytes) + " bytes");
      });
      if (len == std::string_view::npos) break;
      const std::string_view line = detail::strip_cr(r.window().substr(0, len));
      if (n < out.size()) {
        out[n].assign(line);
      } else {
        out.emplace_back(line);
      }
      ++n;
      r.advance(len + (nl ? 1 : 0));
    }
  });
  out.resize(n);
  return n;
}

std::optional<std::string> lines_source::next() {
  if (!stream_) stream_ = std::make_shared<detail::line_stream>(*input_, options_);
  return stream_->next();
}

}  // namespace procflow::stages
