#include "model/config_json.h"

#include <stdexcept>

namespace engine::config_json {
namespace {

[[noreturn]] void throw_wrong_type(const nlohmann::json& value, const std::string& key,
                                   const std::string& file, const char* expected) {
  throw std::invalid_argument(file + ": field '" + key + "' must be " + expected + ", got " +
                              value.type_name() + " " + value.dump());
}

const nlohmann::json* find_non_null(const nlohmann::json& json, const std::string& key) {
  if (!json.is_object()) return nullptr;
  auto it = json.find(key);
  if (it == json.end() || it->is_null()) return nullptr;
  return &*it;
}

int as_int(const nlohmann::json& value, const std::string& key, const std::string& file) {
  if (!value.is_number_integer()) throw_wrong_type(value, key, file, "an integer");
  auto v = value.get<int64_t>();
  if (v < INT32_MIN || v > INT32_MAX) throw_wrong_type(value, key, file, "a 32-bit integer");
  return static_cast<int>(v);
}

double as_number(const nlohmann::json& value, const std::string& key, const std::string& file) {
  if (!value.is_number()) throw_wrong_type(value, key, file, "a number");
  return value.get<double>();
}

[[noreturn]] void throw_missing(const std::string& key, const std::string& file) {
  throw std::invalid_argument(file + ": missing required field '" + key + "'");
}

}  // namespace

int required_int(const nlohmann::json& json, const std::string& key, const std::string& file) {
  const nlohmann::json* value = find_non_null(json, key);
  if (value == nullptr) throw_missing(key, file);
  return as_int(*value, key, file);
}

double required_number(const nlohmann::json& json, const std::string& key,
                       const std::string& file) {
  const nlohmann::json* value = find_non_null(json, key);
  if (value == nullptr) throw_missing(key, file);
  return as_number(*value, key, file);
}

std::optional<int> optional_int(const nlohmann::json& json, const std::string& key,
                                const std::string& file) {
  const nlohmann::json* value = find_non_null(json, key);
  if (value == nullptr) return std::nullopt;
  return as_int(*value, key, file);
}

std::optional<double> optional_number(const nlohmann::json& json, const std::string& key,
                                      const std::string& file) {
  const nlohmann::json* value = find_non_null(json, key);
  if (value == nullptr) return std::nullopt;
  return as_number(*value, key, file);
}

std::optional<bool> optional_bool(const nlohmann::json& json, const std::string& key,
                                  const std::string& file) {
  const nlohmann::json* value = find_non_null(json, key);
  if (value == nullptr) return std::nullopt;
  if (!value->is_boolean()) throw_wrong_type(*value, key, file, "true or false");
  return value->get<bool>();
}

std::optional<std::string> optional_string(const nlohmann::json& json, const std::string& key,
                                           const std::string& file) {
  const nlohmann::json* value = find_non_null(json, key);
  if (value == nullptr) return std::nullopt;
  if (!value->is_string()) throw_wrong_type(*value, key, file, "a string");
  return value->get<std::string>();
}

}  // namespace engine::config_json
