// Linked when DSV3_CUDA=OFF: every CUDA entry fails with the same instruction.
#include "backend/backend.h"
#include "core/check.h"

namespace dsv3::cuda {

[[noreturn]] static void unavailable() {
  fail("this dsv3 was built without CUDA; rebuild with -DDSV3_CUDA=ON or use --device cpu");
}
bool available() { return false; }
std::string describe() { return "not built (DSV3_CUDA=OFF)"; }
void* alloc(size_t) { unavailable(); }
void free(void*) { unavailable(); }
void copy(void*, bool, const void*, bool, size_t) { unavailable(); }
void zero(void*, size_t) { unavailable(); }

}  // namespace dsv3::cuda
