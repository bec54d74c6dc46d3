#pragma once
// 64-bit mixing shared by prefix-cache block hashes and the per-request sampling keys. These
// are fixed functions (never std::hash), so hashes and sampled tokens are reproducible across
// runs, processes and platforms.

#include <cstdint>

namespace engine {

// splitmix64's finalizer: a bijection that spreads every input bit over the whole word.
inline uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

// splitmix64: a golden-ratio step, then the finalizer.
inline uint64_t splitmix64(uint64_t x) { return mix64(x + 0x9e3779b97f4a7c15ULL); }

}  // namespace engine
