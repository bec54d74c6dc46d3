#include "backend/cpu/scratch.h"

#include <cstdlib>
#include <memory>
#include <new>

namespace engine::cpu {

void* aligned_allocate(size_t nbytes) {
  size_t rounded = (nbytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

float* thread_scratch(size_t num_floats) {
  struct FreeDeleter {
    void operator()(void* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<float, FreeDeleter> buffer;
  thread_local size_t capacity = 0;
  if (num_floats > capacity) {
    buffer.reset();
    buffer.reset(static_cast<float*>(aligned_allocate(num_floats * sizeof(float))));
    capacity = num_floats;
  }
  return buffer.get();
}

}  // namespace engine::cpu
