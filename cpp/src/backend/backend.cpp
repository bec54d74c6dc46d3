#include "backend/backend.h"

#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>

namespace engine {

bool is_valid_kv_cache_scale(float scale) {
  return scale > 0.0f && std::isfinite(scale) && std::isfinite(1.0f / scale);
}

std::string invalid_kv_cache_scale_message(const std::string& what, float scale) {
  return what + " is " + std::to_string(scale) +
         " but must be positive and finite, with a finite reciprocal";
}

void check_kv_cache_scales(const char* kernel, const KVCacheScales& scales) {
  for (auto [name, scale] : {std::pair{"scales.k", scales.k}, std::pair{"scales.v", scales.v}}) {
    if (!is_valid_kv_cache_scale(scale)) {
      throw std::invalid_argument(
          invalid_kv_cache_scale_message(std::string(kernel) + ": " + name, scale));
    }
  }
}

std::unique_ptr<CapturedGraph> Backend::capture(const std::function<void()>& /*enqueue*/) {
  throw std::logic_error(std::string("the ") + name() +
                         " backend has no graphs; check supports_graphs() first");
}

}  // namespace engine
