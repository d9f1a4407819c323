// The SIMT emulator's scheduler (emu.h): fibers on ucontext, one block at a time.
#include "cuda_emu/emu.h"

#include <ucontext.h>

#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "core/check.h"

namespace dsv3::emu {
namespace {

constexpr size_t kStackBytes = 128 * 1024;  // kernels keep small frames (registers, in CUDA)

enum class State : uint8_t { Run, BlockBarrier, WarpBarrier, Done };

struct Fiber {
  ucontext_t ctx{};
  std::unique_ptr<char[]> stack;  // kStackBytes, left uninitialised
  dim3 tid;
  State state = State::Run;
};

struct Block {
  dim3 bid, bdim, gdim;
  int threads = 0, cur = -1;
  ucontext_t sched{};
  std::vector<char>* smem = nullptr;
  std::vector<char> exchange;  // per warp: 32 lanes x kLaneSlot
  const std::function<void()>* body = nullptr;
  std::exception_ptr error;
};

// The fiber pool (stacks are reused across blocks and launches) and the running block.
std::vector<Fiber>& pool() {
  static std::vector<Fiber> p;
  return p;
}
Block* g_block = nullptr;
Stats g_stats;

Fiber& current() {
  DSV3_CHECK(g_block && g_block->cur >= 0, "CUDA emulation: a device function ran outside a kernel");
  return pool()[size_t(g_block->cur)];
}

void yield(State s) {
  Fiber& f = current();
  f.state = s;
  swapcontext(&f.ctx, &g_block->sched);
}

void trampoline() {
  Block* b = g_block;
  try {
    (*b->body)();
  } catch (...) {
    if (!b->error) b->error = std::current_exception();
  }
  pool()[size_t(b->cur)].state = State::Done;
  // returning resumes uc_link, the scheduler
}

const char* state_name(State s) {
  switch (s) {
    case State::Run: return "running";
    case State::BlockBarrier: return "__syncthreads";
    case State::WarpBarrier: return "a warp collective";
    case State::Done: return "done";
  }
  return "?";
}

void run_block(Block& b) {
  std::vector<Fiber>& f = pool();
  for (int i = 0; i < b.threads; i++) {
    Fiber& fb = f[size_t(i)];
    fb.tid = dim3(unsigned(i) % b.bdim.x, unsigned(i) / b.bdim.x % b.bdim.y,
                  unsigned(i) / (b.bdim.x * b.bdim.y));
    fb.state = State::Run;
    getcontext(&fb.ctx);
    fb.ctx.uc_stack.ss_sp = fb.stack.get();
    fb.ctx.uc_stack.ss_size = kStackBytes;
    fb.ctx.uc_link = &b.sched;
    makecontext(&fb.ctx, trampoline, 0);
  }
  const int warps = (b.threads + 31) / 32;
  for (;;) {
    bool ran = false;
    for (int i = 0; i < b.threads; i++)
      if (f[size_t(i)].state == State::Run) {
        b.cur = i;
        swapcontext(&b.sched, &f[size_t(i)].ctx);
        ran = true;
        if (b.error) std::rethrow_exception(b.error);
      }
    b.cur = -1;
    if (ran) continue;
    // Nobody can run: release a warp whose live lanes all wait at a warp collective, else the
    // block when every live thread waits at __syncthreads.
    bool released = false;
    for (int w = 0; w < warps; w++) {
      const int l0 = 32 * w, l1 = std::min(b.threads, l0 + 32);
      bool any = false, all = true;
      for (int i = l0; i < l1; i++) {
        const State s = f[size_t(i)].state;
        if (s == State::Done) continue;
        any = true;
        all = all && s == State::WarpBarrier;
      }
      if (any && all) {
        for (int i = l0; i < l1; i++)
          if (f[size_t(i)].state == State::WarpBarrier) f[size_t(i)].state = State::Run;
        g_stats.warp_collectives++;
        released = true;
      }
    }
    if (released) continue;
    int live = 0, at_block = 0;
    for (int i = 0; i < b.threads; i++) {
      live += f[size_t(i)].state != State::Done;
      at_block += f[size_t(i)].state == State::BlockBarrier;
    }
    if (live == 0) return;
    if (at_block == live) {
      for (int i = 0; i < b.threads; i++)
        if (f[size_t(i)].state == State::BlockBarrier) f[size_t(i)].state = State::Run;
      g_stats.block_barriers++;
      continue;
    }
    std::string why;
    for (int i = 0; i < b.threads; i++)
      why += cat(" t", i, "=", state_name(f[size_t(i)].state));
    fail("CUDA emulation: deadlock in block (", b.bid.x, ",", b.bid.y, ",", b.bid.z,
         "): threads wait at different barriers:", why);
  }
}

}  // namespace

const dim3& thread_idx() { return current().tid; }
const dim3& block_idx() { return g_block->bid; }
const dim3& block_dim() { return g_block->bdim; }
const dim3& grid_dim() { return g_block->gdim; }
char* dynamic_smem() { return g_block->smem->data(); }
unsigned lane_id() { return unsigned(g_block->cur) & 31u; }

void syncthreads() { yield(State::BlockBarrier); }
void syncwarp() { yield(State::WarpBarrier); }

const char* warp_exchange(const void* mine, size_t bytes) {
  DSV3_CHECK(bytes <= kLaneSlot, "CUDA emulation: warp deposit of ", bytes, " bytes");
  const size_t warp = size_t(g_block->cur) / 32, lane = size_t(g_block->cur) % 32;
  char* base = g_block->exchange.data() + warp * 32 * kLaneSlot;
  std::memcpy(base + lane * kLaneSlot, mine, bytes);
  yield(State::WarpBarrier);
  return base;
}

uint32_t ballot(bool pred) {
  const char p = pred ? 1 : 0;
  const char* all = warp_exchange(&p, 1);
  const int w0 = g_block->cur / 32 * 32;
  uint32_t bits = 0;
  for (int l = 0; l < 32 && w0 + l < g_block->threads; l++)
    if (pool()[size_t(w0 + l)].state != State::Done && all[size_t(l) * kLaneSlot]) bits |= 1u << l;
  syncwarp();
  return bits;
}

void run_grid(dim3 grid, dim3 block, size_t smem, const std::function<void()>& body) {
  DSV3_CHECK(!g_block, "CUDA emulation: a kernel launched another kernel");
  const int threads = int(block.x * block.y * block.z);
  DSV3_CHECK(threads >= 1 && threads <= 1024, "CUDA emulation: ", threads, " threads per block");
  std::vector<Fiber>& f = pool();
  if (f.size() < size_t(threads)) f.resize(size_t(threads));
  for (auto& fb : f)
    if (!fb.stack) fb.stack.reset(new char[kStackBytes]);
  static std::vector<char> shared;
  shared.assign(smem, char(0xFF));
  Block b;
  b.bdim = block;
  b.gdim = grid;
  b.threads = threads;
  b.smem = &shared;
  b.exchange.assign(size_t((threads + 31) / 32) * 32 * kLaneSlot, 0);
  b.body = &body;
  g_stats = {};
  g_block = &b;
  try {
    for (unsigned z = 0; z < grid.z; z++)
      for (unsigned y = 0; y < grid.y; y++)
        for (unsigned x = 0; x < grid.x; x++) {
          b.bid = dim3(x, y, z);
          std::fill(shared.begin(), shared.end(), char(0xFF));  // NaN: unwritten smem shows
          run_block(b);
          g_stats.blocks++;
          g_stats.threads += uint64_t(threads);
        }
  } catch (...) {
    g_block = nullptr;
    throw;
  }
  g_block = nullptr;
}

Stats last_stats() { return g_stats; }

}  // namespace dsv3::emu
