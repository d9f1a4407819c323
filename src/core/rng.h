// Deterministic random numbers. The whole state is four 64-bit words so checkpoints can store it
// and resume bit-exactly (T6). xoshiro256** seeded through splitmix64.
#pragma once
#include <array>
#include <cmath>
#include <cstdint>

namespace dsv3 {

struct Rng {
  std::array<uint64_t, 4> s{};

  explicit Rng(uint64_t seed = 0) { reseed(seed); }
  void reseed(uint64_t seed) {
    for (auto& w : s) {  // splitmix64
      seed += 0x9e3779b97f4a7c15ull;
      uint64_t z = seed;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      w = z ^ (z >> 31);
    }
  }
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t next_u64() {
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0], s[3] ^= s[1], s[1] ^= s[2], s[0] ^= s[3], s[2] ^= t, s[3] = rotl(s[3], 45);
    return r;
  }
  // uniform in [0, 1) with 24 bits, exactly representable as float
  float uniform() { return float(next_u64() >> 40) * (1.0f / 16777216.0f); }
  // uniform integer in [0, n)
  uint64_t below(uint64_t n) { return next_u64() % n; }
  // standard normal (Box-Muller, one value per call so the stream position is simple)
  float normal() {
    double u1 = (double(next_u64() >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    double u2 = double(next_u64() >> 11) * (1.0 / 9007199254740992.0);
    return float(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  }
};

}  // namespace dsv3
