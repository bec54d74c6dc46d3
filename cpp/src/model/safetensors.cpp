#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

namespace engine {
namespace {

[[noreturn]] void fail(const std::string& path, const std::string& problem) {
  throw std::runtime_error(path + ": " + problem);
}

DType parse_dtype(const std::string& path, const std::string& name, const std::string& dtype) {
  if (dtype == "F32") return DType::kF32;
  if (dtype == "F16") return DType::kF16;
  if (dtype == "BF16") return DType::kBF16;
  if (dtype == "I32") return DType::kI32;
  if (dtype == "I64") return DType::kI64;
  fail(path, "tensor '" + name + "' has unsupported dtype '" + dtype +
                 "' (supported: F32, F16, BF16, I32, I64)");
}

// One header entry: {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, offsets
// relative to the first byte after the header.
Tensor parse_entry(const std::string& path, const std::string& name, const nlohmann::json& entry,
                   uint8_t* data, uint64_t data_size) {
  if (!entry.is_object() || !entry.contains("dtype") || !entry["dtype"].is_string() ||
      !entry.contains("shape") || !entry["shape"].is_array() || !entry.contains("data_offsets") ||
      !entry["data_offsets"].is_array() || entry["data_offsets"].size() != 2) {
    fail(path, "tensor '" + name + "' needs dtype, shape and data_offsets [begin, end], got " +
                   entry.dump());
  }
  DType dtype = parse_dtype(path, name, entry["dtype"].get<std::string>());
  std::vector<int64_t> shape;
  uint64_t numel = 1;
  for (const nlohmann::json& dim : entry["shape"]) {
    if (!dim.is_number_unsigned())
      fail(path, "tensor '" + name + "' has a bad shape " + entry["shape"].dump());
    shape.push_back(dim.get<int64_t>());
    numel *= dim.get<uint64_t>();
  }
  const nlohmann::json& offsets = entry["data_offsets"];
  if (!offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned()) {
    fail(path, "tensor '" + name + "' has bad data_offsets " + offsets.dump());
  }
  uint64_t begin = offsets[0].get<uint64_t>();
  uint64_t end = offsets[1].get<uint64_t>();
  if (begin > end || end > data_size) {
    fail(path, "tensor '" + name + "' data_offsets " + offsets.dump() +
                   " are out of range of the " + std::to_string(data_size) + " data bytes");
  }
  if (end - begin != numel * dtype_size(dtype)) {
    fail(path, "tensor '" + name + "' spans " + std::to_string(end - begin) +
                   " bytes but its shape " + entry["shape"].dump() + " and dtype " +
                   entry["dtype"].get<std::string>() + " need " +
                   std::to_string(numel * dtype_size(dtype)));
  }
  return Tensor(data + begin, dtype, std::move(shape), DeviceType::kCpu);
}

std::pair<void*, size_t> map_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat info{};
  if (::fstat(fd, &info) != 0) {
    ::close(fd);
    fail(path, std::string("cannot stat: ") + std::strerror(errno));
  }
  size_t size = static_cast<size_t>(info.st_size);
  if (size < 8) {
    ::close(fd);
    fail(path,
         "file has " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  }
  void* mapping = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);  // the mapping keeps the file alive
  if (mapping == MAP_FAILED) fail(path, std::string("cannot mmap: ") + std::strerror(errno));
  return {mapping, size};
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  auto [mapping, size] = map_file(path);
  mapping_ = mapping;
  mapping_size_ = size;
  try {
    auto* bytes = static_cast<uint8_t*>(mapping_);
    uint64_t header_size = 0;
    for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | bytes[i];  // little-endian
    if (header_size > size - 8) {
      fail(path, "header length " + std::to_string(header_size) + " runs past the end of the " +
                     std::to_string(size) + "-byte file");
    }
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(bytes + 8, bytes + 8 + header_size);
    } catch (const nlohmann::json::parse_error& e) {
      fail(path, std::string("header is not valid JSON: ") + e.what());
    }
    if (!header.is_object()) fail(path, "header is not a JSON object");
    uint8_t* data = bytes + 8 + header_size;
    uint64_t data_size = size - 8 - header_size;
    for (const auto& [name, entry] : header.items()) {
      if (name == "__metadata__") continue;
      Tensor tensor = parse_entry(path, name, entry, data, data_size);
      // NOTE: writers pad the header to 8 bytes so that tensors can be used in place; a file
      // without that padding is still valid, and its misaligned tensors are copied once.
      if (reinterpret_cast<uintptr_t>(tensor.data) % dtype_size(tensor.dtype) != 0) {
        auto& copy = aligned_copies_.emplace_back(new uint64_t[(tensor.nbytes() + 7) / 8]);
        std::memcpy(copy.get(), tensor.data, tensor.nbytes());
        tensor.data = copy.get();
      }
      tensors_.emplace(name, std::move(tensor));
    }
  } catch (...) {
    ::munmap(mapping_, mapping_size_);
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_size_);
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> result;
  for (const auto& [name, tensor] : tensors_) result.push_back(name);
  return result;
}

bool SafetensorsFile::contains(const std::string& name) const { return tensors_.count(name) > 0; }

Tensor SafetensorsFile::get(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) fail(path_, "no tensor named '" + name + "'");
  return it->second;
}

namespace {

// The shard file names of model.safetensors.index.json's weight_map, in sorted order.
std::set<std::string> read_index_shards(const std::string& index_path) {
  std::ifstream in(index_path);
  if (!in) fail(index_path, "cannot open");
  nlohmann::json index;
  try {
    index = nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& e) {
    fail(index_path, std::string("invalid JSON: ") + e.what());
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
    fail(index_path, "missing object 'weight_map'");
  }
  std::set<std::string> shards;
  for (const auto& [name, shard] : index["weight_map"].items()) {
    if (!shard.is_string()) fail(index_path, "weight_map entry '" + name + "' is not a file name");
    shards.insert(shard.get<std::string>());
  }
  return shards;
}

}  // namespace

WeightStore WeightStore::open(const std::string& dir) {
  namespace fs = std::filesystem;
  WeightStore store;
  store.dir_ = dir;
  std::vector<std::string> paths;
  fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  if (fs::exists(index_path)) {
    for (const std::string& shard : read_index_shards(index_path.string())) {
      fs::path shard_path = fs::path(dir) / shard;
      if (!fs::exists(shard_path)) {
        fail(index_path.string(), "shard '" + shard + "' listed in weight_map does not exist");
      }
      paths.push_back(shard_path.string());
    }
  } else if (fs::is_directory(dir)) {
    for (const fs::directory_entry& entry : fs::directory_iterator(dir)) {
      if (entry.path().extension() == ".safetensors") paths.push_back(entry.path().string());
    }
    std::sort(paths.begin(), paths.end());
  }
  if (paths.empty()) fail(dir, "no *.safetensors files and no model.safetensors.index.json");
  for (const std::string& path : paths) {
    auto file = std::make_shared<SafetensorsFile>(path);
    for (const std::string& name : file->names()) {
      auto [it, inserted] = store.index_.emplace(name, file.get());
      if (!inserted) fail(path, "tensor '" + name + "' is also in " + it->second->path());
    }
    store.files_.push_back(std::move(file));
  }
  return store;
}

bool WeightStore::contains(const std::string& name) const { return index_.count(name) > 0; }

Tensor WeightStore::get(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) fail(dir_, "checkpoint has no tensor named '" + name + "'");
  return it->second->get(name);
}

std::vector<std::string> WeightStore::names() const {
  std::vector<std::string> result;
  for (const auto& [name, file] : index_) result.push_back(name);
  return result;
}

}  // namespace engine
