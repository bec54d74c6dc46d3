#pragma once
// Typed reads of config.json fields with errors that name the file and the field, shared by
// ModelConfig and the architecture files (each reads the fields in which it differs).

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace engine::config_json {

// A field that must be present, non-null and of the right type; otherwise throws
// std::invalid_argument "config.json: missing required field 'hidden_size'" (or "... must be an
// integer, got string").
int required_int(const nlohmann::json& json, const std::string& key,
                 const std::string& file = "config.json");
double required_number(const nlohmann::json& json, const std::string& key,
                       const std::string& file = "config.json");

// Absent or null -> nullopt; present with the wrong type -> std::invalid_argument.
std::optional<int> optional_int(const nlohmann::json& json, const std::string& key,
                                const std::string& file = "config.json");
std::optional<double> optional_number(const nlohmann::json& json, const std::string& key,
                                      const std::string& file = "config.json");
std::optional<bool> optional_bool(const nlohmann::json& json, const std::string& key,
                                  const std::string& file = "config.json");
std::optional<std::string> optional_string(const nlohmann::json& json, const std::string& key,
                                           const std::string& file = "config.json");

}  // namespace engine::config_json
