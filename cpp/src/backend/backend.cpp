#include "backend/backend.h"

#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>

namespace engine {

bool is_valid_kv_cache_scale(float scale) {
  return scale > 0.0f && std::isfinite(scale) && std::isfinite(1.0f / scale);
}

void check_kv_cache_scales(const char* kernel, const KVCacheScales& scales) {
  for (auto [name, scale] : {std::pair{"scales.k", scales.k}, std::pair{"scales.v", scales.v}}) {
    if (!is_valid_kv_cache_scale(scale)) {
      throw std::invalid_argument(std::string(kernel) + ": " + name + " is " +
                                  std::to_string(scale) +
                                  " but must be positive and finite, with a finite reciprocal");
    }
  }
}

std::unique_ptr<CapturedGraph> Backend::capture(const std::function<void()>& /*enqueue*/) {
  throw std::logic_error(std::string("the ") + name() +
                         " backend has no graphs; check supports_graphs() first");
}

}  // namespace engine
