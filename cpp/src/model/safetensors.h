#pragma once
// Read-only access to *.safetensors weights by mmap: one file, or shards listed in
// model.safetensors.index.json. Tensors are views into the mapping (zero copy).

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backend/tensor.h"

namespace engine {

class SafetensorsFile {
 public:
  // Maps the file and parses its header. Throws std::runtime_error naming the file and what
  // is wrong: missing, shorter than its header says, bad JSON, unknown dtype, offsets out of
  // range or inconsistent with shape and dtype.
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const;
  Tensor get(const std::string& name) const;  // throws naming the tensor if absent

 private:
  std::string path_;
  void* mapping_ = nullptr;
  size_t mapping_size_ = 0;
  std::map<std::string, Tensor> tensors_;
  std::vector<std::unique_ptr<uint64_t[]>> aligned_copies_;  // of tensors misaligned in the file
};

// All weights of a checkpoint directory, across shards.
class WeightStore {
 public:
  // Opens <dir>/model.safetensors.index.json's shards, or every *.safetensors in dir.
  // Throws std::runtime_error if there is none, naming the directory.
  static WeightStore open(const std::string& dir);

  bool contains(const std::string& name) const;
  Tensor get(const std::string& name) const;  // throws naming the tensor and the directory
  std::vector<std::string> names() const;

 private:
  std::string dir_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, SafetensorsFile*> index_;
};

}  // namespace engine
