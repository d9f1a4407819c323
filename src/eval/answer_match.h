// Scoring a generated answer against a reference (E2, generation tasks).
//
// exact match: both sides normalised, then compared as strings. The normalisation is
// lm-evaluation-harness's gsm8k one made general: keep what follows the last "#### " (GSM8K's
// answer marker) when there is one, drop ',' and '$', trim, drop one trailing '.', lower-case
// ASCII letters, collapse whitespace runs to one space.
//
// numeric: the number of each side compared as a number: the reference's is the one after
// "#### " or else its last number; the generation's is the one after "#### " or else its last
// number (lm-evaluation-harness's "flexible-extract"). Numbers are read with ',' separators
// and '$' removed, and compared as canonical decimals ("12.50" == "12.5", "-0" == "0").
#pragma once
#include <optional>
#include <string>
#include <string_view>

namespace dsv3::eval {

std::string normalize_answer(std::string_view text);
bool exact_match(std::string_view generated, std::string_view reference);

// The canonical decimal text of the answer's number, or nothing when it holds none.
std::optional<std::string> extract_number(std::string_view text);

// Generation is cut at the first of these stop strings (kept out of the answer).
std::string cut_at_stop(std::string_view text, std::string_view stop);

}  // namespace dsv3::eval
