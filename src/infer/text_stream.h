// Streamed text of a generation with stop strings (I1): decoded bytes go in token by token;
// what comes out is safe to show now -- never a partial UTF-8 character, never text that could
// still turn out to be the start of a stop string. When a stop string appears, the text before
// it is the rest of the output and the stop string itself is not shown (OpenAI's semantics).
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace dsv3 {

class TextStream {
 public:
  explicit TextStream(std::vector<std::string> stop = {});
  // Appends the bytes of a token; returns the text that can be shown now.
  std::string feed(std::string_view bytes);
  bool stopped() const { return stopped_; }
  // At the end of generation: whatever is held back (an incomplete character is shown as is).
  std::string flush();

 private:
  std::vector<std::string> stop_;
  size_t longest_ = 0;
  std::string pending_;  // bytes not yet shown
  bool stopped_ = false;
};

}  // namespace dsv3
