// Linked when DSV3_CUDA=OFF: every CUDA entry fails with the same instruction.
#include "backend/backend.h"
#include "core/check.h"

namespace dsv3::cuda {

[[noreturn]] static void unavailable() {
  fail("this dsv3 was built without CUDA; rebuild with -DDSV3_CUDA=ON or use --device cpu");
}
bool available() { return false; }
std::string describe() { return "this dsv3 was built without CUDA (rebuild with -DDSV3_CUDA=ON)"; }
void* alloc(size_t) { unavailable(); }
void free(void*) { unavailable(); }
void copy(void*, const void*, size_t, int, Stream*) { unavailable(); }
void memset_zero(void*, size_t, Stream*) { unavailable(); }
void synchronize(Stream*) { unavailable(); }
Stream* stream_create() { unavailable(); }
void stream_destroy(Stream*) { unavailable(); }
Event* event_create() { unavailable(); }
void event_destroy(Event*) { unavailable(); }
void event_record(Event*, Stream*) { unavailable(); }
void event_wait(Stream*, Event*) { unavailable(); }
void event_synchronize(Event*) { unavailable(); }
size_t memory_reserved() { return 0; }
void graph_begin(Stream*) { unavailable(); }
Graph* graph_end(Stream*) { unavailable(); }
void graph_launch(Graph*, Stream*) { unavailable(); }
void graph_destroy(Graph*) {}

}  // namespace dsv3::cuda
