// How an op writes an output buffer. Backward ops ACCUMULATE into gradients by default
// (src/ops/README.md), so residual branches and gradient accumulation need no extra adds;
// Overwrite lets a caller skip zeroing a scratch buffer that the op fills completely.
#pragma once
#include <cstdint>

namespace dsv3 {
enum class Write : uint8_t { Overwrite, Accumulate };
}  // namespace dsv3
