// Base64 (RFC 4648, standard alphabet, with padding): how a dead letter's encoded item travels in
// JSON (dead_letter.hpp).
#pragma once

#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace procflow::faults {

std::string base64_encode(std::span<const std::byte> bytes);
// nullopt when `text` is not canonical padded base64 (a length not a multiple of 4, a character
// outside the alphabet, misplaced padding, or bits set past the end of the data).
std::optional<std::vector<std::byte>> base64_decode(std::string_view text);

}  // namespace procflow::faults
