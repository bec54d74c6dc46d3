#include <stdexcept>

#include "model/architecture.h"
#include "model/decoder.h"
#include "model/model.h"

namespace engine {

const std::vector<Architecture>& architecture_table() {
  static const std::vector<Architecture> table = {
      llama_architecture(),
      mistral_architecture(),
      qwen2_architecture(),
      qwen3_architecture(),
  };
  return table;
}

const Architecture& find_architecture(const std::string& name) {
  for (const Architecture& architecture : architecture_table()) {
    if (architecture.name == name) return architecture;
  }
  std::string supported;
  for (const std::string& known : supported_architectures()) {
    supported += (supported.empty() ? "" : ", ") + known;
  }
  throw std::invalid_argument("config.json: unsupported architecture '" + name +
                              "'; supported: " + supported);
}

std::vector<std::string> supported_architectures() {
  std::vector<std::string> names;
  for (const Architecture& architecture : architecture_table()) names.push_back(architecture.name);
  return names;
}

std::unique_ptr<Model> load_model(const ModelConfig& config, const LoadOptions& options,
                                  Backend& backend) {
  const Architecture& architecture = find_architecture(config.architecture);
  return make_decoder_model(config, architecture.weight_names, options, backend);
}

}  // namespace engine
