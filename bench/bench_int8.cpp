// Int8 linear layers (I3) against fp32 and bf16 ones: linear_forward (the entry point every pass
// calls) on the `tiny` model's weight shapes, for decode-sized (1, 16 tokens) and prefill /
// evaluation-sized (256, 2048 tokens) inputs, with the weight bytes each variant reads.
//
//   OMP_NUM_THREADS=2 build/bench/bench_int8 [--quick] [--json]
//
// Columns: f32 (fp32 x, fp32 w: dnnl_sgemm), bf16 (bf16 x and w: oneDNN's bf16 matmul where the
// CPU has one, else widened to fp32), w8a8 (fp32 x quantised per token, oneDNN u8 x s8 int8 GEMM,
// int8 w), w8a16 (fp32 x, int8 w widened to fp32 in blocks). Each cell: the best of several
// samples of ~20 ms (other jobs only ever slow a sample down).
#include <omp.h>

#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <oneapi/dnnl/dnnl.h>

#include "core/rng.h"
#include "core/timer.h"
#include "ops/gemm.h"
#include "ops/gemm_int8.h"
#include "ops/quant.h"

using namespace dsv3;

namespace {

int g_samples = 7;

double best_seconds(const std::function<void()>& fn) {
  fn();
  int reps = 1;
  for (;;) {
    const double t0 = now_seconds();
    for (int r = 0; r < reps; r++) fn();
    const double t = now_seconds() - t0;
    if (t >= 0.02 || reps >= (1 << 20)) break;
    reps = t <= 0 ? reps * 16 : std::max(reps + 1, int(reps * 0.02 / t * 1.1));
  }
  double best = 1e30;
  for (int s = 0; s < g_samples; s++) {
    const double t0 = now_seconds();
    for (int r = 0; r < reps; r++) fn();
    best = std::min(best, (now_seconds() - t0) / reps);
  }
  return best;
}

std::vector<float> randn(size_t n, uint64_t seed) {
  Rng r(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = float(r.normal());
  return v;
}

struct Shape {
  const char* name;
  int in, out;
};

}  // namespace

int main(int argc, char** argv) {
  bool json_out = false;
  for (int i = 1; i < argc; i++) {
    if (!std::strcmp(argv[i], "--quick")) g_samples = 3;
    else if (!std::strcmp(argv[i], "--json")) json_out = true;
    else {
      std::fprintf(stderr, "usage: bench_int8 [--quick] [--json]\n");
      return 2;
    }
  }
  // tiny: hidden 256, q_lora 128, kv_lora 64 (+16 rope), 4 heads x (32+16) q, dense 768, experts 128
  const Shape shapes[] = {{"q_a 256->128", 256, 128},        {"q_b 128->192", 128, 192},
                          {"kv_a 256->80", 256, 80},         {"o 128->256", 128, 256},
                          {"dense w13 256->1536", 256, 1536}, {"dense w2 768->256", 768, 256},
                          {"expert w13 256->256", 256, 256},  {"expert w2 128->256", 128, 256}};
  const int tokens[] = {1, 16, 256, 2048};
  const char* variants[] = {"f32", "bf16", "w8a8", "w8a16"};
  nlohmann::json rows = nlohmann::json::array();
  std::fprintf(stderr, "%d threads; oneDNN ISA 0x%x; GFLOP/s (weight bytes)\n", omp_get_max_threads(),
               unsigned(dnnl_get_effective_cpu_isa()));
  std::fprintf(stderr, "%-22s %6s %10s %10s %10s %10s\n", "shape", "tokens", "f32", "bf16", "w8a8", "w8a16");
  for (const Shape& s : shapes) {
    const auto w = randn(size_t(s.out) * s.in, 1);
    std::vector<uint16_t> wb(w.size());
    convert(wb.data(), DType::BF16, w.data(), DType::F32, w.size());
    std::vector<uint8_t> wq(q8_matrix_bytes(s.out, s.in));
    cpu::q8_quantize(wq.data(), w.data(), s.out, s.in, size_t(s.in));
    for (int N : tokens) {
      const auto x = randn(size_t(N) * s.in, 2);
      std::vector<uint16_t> xb(x.size());
      convert(xb.data(), DType::BF16, x.data(), DType::F32, x.size());
      std::vector<float> y(size_t(N) * s.out);
      std::vector<uint16_t> yb(y.size());
      const double flops = 2.0 * N * s.in * s.out;
      double gf[4];
      size_t bytes[4] = {w.size() * 4, w.size() * 2, wq.size(), wq.size()};
      gf[0] = flops / best_seconds([&] {
        linear_forward(Exec{}, host_tensor(y), host_tensor(x), host_tensor(w), N, s.in, s.out);
      }) / 1e9;
      gf[1] = flops / best_seconds([&] {
        linear_forward(Exec{}, Tensor(yb.data(), yb.size(), DType::BF16), Tensor(xb.data(), xb.size(), DType::BF16),
                       Tensor(wb.data(), wb.size(), DType::BF16), N, s.in, s.out);
      }) / 1e9;
      for (int v = 2; v < 4; v++)
        gf[v] = flops / best_seconds([&] {
          linear_forward(Exec{}, host_tensor(y), host_tensor(x),
                         Tensor(wq.data(), wq.size(), v == 2 ? DType::W8A8 : DType::W8A16), N, s.in, s.out);
        }) / 1e9;
      std::fprintf(stderr, "%-22s %6d %10.1f %10.1f %10.1f %10.1f\n", s.name, N, gf[0], gf[1], gf[2], gf[3]);
      nlohmann::json row = {{"shape", s.name}, {"tokens", N}};
      for (int v = 0; v < 4; v++) row[variants[v]] = {{"gflops", gf[v]}, {"weight_bytes", bytes[v]}};
      rows.push_back(row);
    }
  }
  if (json_out) std::printf("%s\n", rows.dump().c_str());
  return 0;
}
