#include "backend/backend.h"

#include <stdexcept>
#include <string>

namespace engine {

std::unique_ptr<CapturedGraph> Backend::capture(const std::function<void()>& /*enqueue*/) {
  throw std::logic_error(std::string("the ") + name() +
                         " backend has no graphs; check supports_graphs() first");
}

}  // namespace engine
