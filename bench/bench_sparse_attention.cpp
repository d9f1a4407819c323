// The attention core alone (M6), forward and backward, on the `tiny` model's head shapes
// (H = 4, d_qk = 48, d_v = 32, fp32, batch 1): dense, window and LSH attention as the model runs
// them (blocked GEMMs), and the per-query gather kernel they replaced (`*-gather`: the window
// through sparse_attention_*_gather, LSH through lsh_attention_index + the gather kernel).
// bench/bench_attention.py runs it beside PyTorch's versions of the same three.
//
//   OMP_NUM_THREADS=2 build/bench/bench_sparse_attention [--lengths 1024,4096] [--window 256]
//       [--buckets 32] [--chunk 64] [--rounds 1] [--samples 3] [--max_gib 6] [--no_gather]
//
// One JSON line per (T, kernel): forward and backward ms (each the best of --samples runs after
// one warm-up: other jobs only ever slow a run down) and the bytes forward saves for backward.
#include <omp.h>

#include <cstdio>
#include <cstring>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/rng.h"
#include "core/timer.h"
#include "ops/attention.h"
#include "ops/sparse_attention.h"

using namespace dsv3;

namespace {

int g_samples = 3;

double best_ms(const std::function<void()>& fn) {
  fn();
  double best = 1e30;
  for (int s = 0; s < g_samples; s++) {
    const double t0 = now_seconds();
    fn();
    best = std::min(best, now_seconds() - t0);
  }
  return best * 1e3;
}

std::vector<float> randn(size_t n, uint64_t seed) {
  Rng r(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = float(r.normal());
  return v;
}

std::vector<int> parse_list(const std::string& s) {
  std::vector<int> v;
  std::stringstream ss(s);
  for (std::string x; std::getline(ss, x, ',');) v.push_back(std::stoi(x));
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> lengths = {1024, 4096};
  int window = 256, buckets = 32, chunk = 64, rounds = 1;
  double max_gib = 6;
  bool gather = true;
  for (int i = 1; i < argc; i++) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_sparse_attention: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--lengths") lengths = parse_list(next());
    else if (a == "--window") window = std::stoi(next());
    else if (a == "--buckets") buckets = std::stoi(next());
    else if (a == "--chunk") chunk = std::stoi(next());
    else if (a == "--rounds") rounds = std::stoi(next());
    else if (a == "--samples") g_samples = std::stoi(next());
    else if (a == "--max_gib") max_gib = std::stod(next());
    else if (a == "--no_gather") gather = false;
    else {
      std::fprintf(stderr, "bench_sparse_attention: unknown argument %s (see the file's header)\n", a.c_str());
      return 2;
    }
  }
  if (window < 1 || buckets < 2 || buckets % 2 || chunk < 1 || rounds < 1 || g_samples < 1) {
    std::fprintf(stderr, "bench_sparse_attention: need window >= 1, even buckets >= 2, chunk, rounds, samples >= 1\n");
    return 2;
  }
  const int B = 1, H = 4, dqk = 48, dv = 32;
  const double scale = 1.0 / std::sqrt(double(dqk));
  const Exec ex{};
  for (int T : lengths) {
    const size_t nq = size_t(B) * T * H * dqk, nv = size_t(B) * T * H * dv;
    std::vector<float> q = randn(nq, 1), k = randn(nq, 2), v = randn(nv, 3), g = randn(nv, 4);
    std::vector<float> out(nv), dq(nq), dk(nq), dvv(nv);
    auto run = [&](const char* name, size_t saved_bytes, const std::function<void()>& fwd,
                   const std::function<void()>& bwd) {
      nlohmann::json j{{"T", T}, {"kernel", name}, {"threads", omp_get_max_threads()},
                       {"saved_bytes", saved_bytes}};
      if (saved_bytes / double(1 << 30) > max_gib) {
        j["skipped"] = "saves more than --max_gib";
      } else {
        j["forward_ms"] = best_ms(fwd);
        j["backward_ms"] = best_ms(bwd);
      }
      std::printf("%s\n", j.dump().c_str());
      std::fflush(stdout);
    };
    {  // dense
      const AttentionShape s{B, T, H, dqk, dv, scale};
      const AttentionSaved sv = attention_saved(Device::CPU, DType::F32, s);
      if (sv.numel * 4 / double(1 << 30) <= max_gib) {
        std::vector<float> P(sv.numel);
        run("dense", sv.numel * 4,
            [&] { attention_forward(ex, host_tensor(out), host_tensor(P), host_tensor(q), host_tensor(k), host_tensor(v), s); },
            [&] {
              attention_backward(ex, host_tensor(dq), host_tensor(dk), host_tensor(dvv), host_tensor(g), host_tensor(q),
                                 host_tensor(k), host_tensor(v), host_tensor(out), host_tensor(P), s);
            });
      } else {
        run("dense", sv.numel * 4, {}, {});
      }
    }
    {  // window: blocked, then the gather kernel
      const SparseAttentionShape s{B, T, H, dqk, dv, scale, window, window};
      std::vector<float> P(size_t(B) * H * T * window);
      run("window", P.size() * 4,
          [&] { sparse_attention_forward(ex, host_tensor(out), host_tensor(P), host_tensor(q), host_tensor(k), host_tensor(v), Tensor{}, s); },
          [&] {
            sparse_attention_backward(ex, host_tensor(dq), host_tensor(dk), host_tensor(dvv), host_tensor(g), host_tensor(q),
                                      host_tensor(k), host_tensor(v), host_tensor(P), Tensor{}, s);
          });
      if (gather)
        run("window-gather", P.size() * 4,
            [&] { cpu::sparse_attention_forward_gather(out.data(), P.data(), q.data(), k.data(), v.data(), nullptr, s); },
            [&] {
              cpu::sparse_attention_backward_gather(dq.data(), dk.data(), dvv.data(), g.data(), q.data(), k.data(),
                                                    v.data(), P.data(), nullptr, s);
            });
    }
    {  // LSH: blocked, then key lists + the gather kernel
      const LshAttentionShape s{B, T, H, dqk, dv, scale, buckets, rounds, chunk};
      std::vector<float> rot(size_t(H) * rounds * dqk * (buckets / 2));
      lsh_rotations(rot.data(), H, rounds, dqk, buckets, 1);
      std::vector<float> P(size_t(B) * H * T * s.slots());
      std::vector<int32_t> order(size_t(B) * H * rounds * 2 * T);
      run("lsh", P.size() * 4 + order.size() * 4,
          [&] {
            lsh_attention_forward(ex, host_tensor(out), host_tensor(P), host_tensor(order), host_tensor(q), host_tensor(k),
                                  host_tensor(v), host_tensor(rot), s);
          },
          [&] {
            lsh_attention_backward(ex, host_tensor(dq), host_tensor(dk), host_tensor(dvv), host_tensor(g), host_tensor(q),
                                   host_tensor(k), host_tensor(v), host_tensor(P), host_tensor(order), s);
          });
      if (gather) {
        const LshShape ls = s.lsh();
        const SparseAttentionShape ss{B, T, H, dqk, dv, scale, ls.K(), 0};
        std::vector<float> Pg(size_t(B) * H * T * ls.K());
        std::vector<int32_t> index(Pg.size());
        run("lsh-gather", Pg.size() * 8,
            [&] {
              lsh_attention_index(ex, host_tensor(index), Tensor{}, host_tensor(q), host_tensor(k), host_tensor(rot), ls);
              sparse_attention_forward(ex, host_tensor(out), host_tensor(Pg), host_tensor(q), host_tensor(k),
                                       host_tensor(v), host_tensor(index), ss);
            },
            [&] {
              sparse_attention_backward(ex, host_tensor(dq), host_tensor(dk), host_tensor(dvv), host_tensor(g),
                                        host_tensor(q), host_tensor(k), host_tensor(v), host_tensor(Pg),
                                        host_tensor(index), ss);
            });
      }
    }
  }
  return 0;
}
