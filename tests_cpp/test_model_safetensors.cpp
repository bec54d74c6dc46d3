// Safetensors parsing on files written byte by byte here, and weight loading (checkpoint and
// dummy) through a host-memory backend that implements only memory.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

#include "model/decoder_weights.h"
#include "model/safetensors.h"

namespace engine {
namespace {

namespace fs = std::filesystem;

struct RawTensor {
  std::string name;
  std::string dtype;  // "F32", "BF16", ...
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

RawTensor f32_tensor(const std::string& name, std::vector<int64_t> shape,
                     const std::vector<float>& values) {
  std::vector<uint8_t> bytes(values.size() * 4);
  std::memcpy(bytes.data(), values.data(), bytes.size());
  return {name, "F32", std::move(shape), std::move(bytes)};
}

RawTensor bf16_tensor(const std::string& name, std::vector<int64_t> shape,
                      const std::vector<float>& values) {
  std::vector<uint8_t> bytes(values.size() * 2);
  for (size_t i = 0; i < values.size(); ++i) {
    uint16_t v = float_to_bf16(values[i]);
    std::memcpy(bytes.data() + 2 * i, &v, 2);
  }
  return {name, "BF16", std::move(shape), std::move(bytes)};
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string length_prefix(uint64_t n) {
  std::string prefix(8, '\0');
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return prefix;
}

// The safetensors layout: u64 LE header length, header JSON, then the tensors' bytes.
std::string encode_safetensors(const std::vector<RawTensor>& tensors) {
  nlohmann::json header;
  header["__metadata__"] = {{"format", "pt"}};
  std::string data;
  for (const RawTensor& t : tensors) {
    header[t.name] = {{"dtype", t.dtype},
                      {"shape", t.shape},
                      {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data.append(reinterpret_cast<const char*>(t.bytes.data()), t.bytes.size());
  }
  std::string json = header.dump();
  return length_prefix(json.size()) + json + data;
}

std::string encode_with_header(const std::string& header_json, const std::string& data) {
  return length_prefix(header_json.size()) + header_json + data;
}

class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "ember_st_XXXXXX").string();
    path_ = mkdtemp(pattern.data());
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// The runtime_error message of opening `bytes` as a safetensors file.
std::string open_error(const TempDir& dir, const std::string& bytes) {
  fs::path path = dir.path() / "broken.safetensors";
  write_bytes(path, bytes);
  try {
    SafetensorsFile file(path.string());
  } catch (const std::runtime_error& e) {
    std::string message = e.what();
    EXPECT_NE(message.find(path.string()), std::string::npos) << message;
    return message;
  }
  return "";
}

TEST(Safetensors, ReadsTensorsOfAValidFile) {
  TempDir dir;
  fs::path path = dir.path() / "model.safetensors";
  std::vector<int32_t> ids = {7, -3, 11};
  std::vector<uint8_t> id_bytes(12);
  std::memcpy(id_bytes.data(), ids.data(), 12);
  write_bytes(path, encode_safetensors({f32_tensor("a", {2, 3}, {1, 2, 3, 4, 5, 6}),
                                        bf16_tensor("b", {2}, {0.5f, -2.0f}),
                                        {"c", "I32", {3}, id_bytes}}));
  SafetensorsFile file(path.string());
  EXPECT_EQ(file.names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_FALSE(file.contains("__metadata__"));
  Tensor a = file.get("a");
  EXPECT_EQ(a.dtype, DType::kF32);
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a.ptr<float>()[5], 6.0f);
  Tensor b = file.get("b");
  EXPECT_EQ(b.dtype, DType::kBF16);
  EXPECT_EQ(bf16_to_float(b.ptr<uint16_t>()[1]), -2.0f);
  Tensor c = file.get("c");
  EXPECT_EQ(c.dtype, DType::kI32);
  // The test's header is not padded to 8 bytes, so the data may sit misaligned in the file:
  // every tensor handed out is aligned for its dtype all the same.
  for (const Tensor& t : {a, b, c}) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % dtype_size(t.dtype), 0u);
  }
  EXPECT_EQ(c.ptr<int32_t>()[1], -3);
  EXPECT_THROW(file.get("missing"), std::runtime_error);
}

TEST(Safetensors, ShorterThanLengthPrefix) {
  TempDir dir;
  EXPECT_NE(open_error(dir, "abc").find("shorter than the 8-byte header length"),
            std::string::npos);
}

TEST(Safetensors, TruncatedData) {
  TempDir dir;
  std::string bytes = encode_safetensors({f32_tensor("a", {4}, {1, 2, 3, 4})});
  bytes.resize(bytes.size() - 3);
  EXPECT_NE(open_error(dir, bytes).find("out of range"), std::string::npos);
}

TEST(Safetensors, HeaderLengthBeyondFile) {
  TempDir dir;
  EXPECT_NE(open_error(dir, length_prefix(1000) + "{}").find("header length 1000 runs past"),
            std::string::npos);
}

TEST(Safetensors, CorruptJson) {
  TempDir dir;
  EXPECT_NE(open_error(dir, encode_with_header("{\"a\": {\"dtype\": ", "")).find("not valid JSON"),
            std::string::npos);
  EXPECT_NE(open_error(dir, encode_with_header("[1]", "")).find("not a JSON object"),
            std::string::npos);
}

TEST(Safetensors, OffsetsOutOfRange) {
  TempDir dir;
  std::string header = R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})";
  EXPECT_NE(open_error(dir, encode_with_header(header, std::string(8, '\0'))).find("out of range"),
            std::string::npos);
  std::string reversed = R"({"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})";
  EXPECT_NE(
      open_error(dir, encode_with_header(reversed, std::string(8, '\0'))).find("out of range"),
      std::string::npos);
}

TEST(Safetensors, SizeInconsistentWithShapeAndDtype) {
  TempDir dir;
  std::string header = R"({"a": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 8]}})";
  std::string message = open_error(dir, encode_with_header(header, std::string(8, '\0')));
  EXPECT_NE(message.find("tensor 'a' spans 8 bytes"), std::string::npos) << message;
  EXPECT_NE(message.find("need 12"), std::string::npos) << message;
}

TEST(Safetensors, UnsupportedDtype) {
  TempDir dir;
  std::string header = R"({"a": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}})";
  EXPECT_NE(open_error(dir, encode_with_header(header, std::string(8, '\0')))
                .find("tensor 'a' has unsupported dtype 'F64'"),
            std::string::npos);
}

TEST(Safetensors, MalformedEntry) {
  TempDir dir;
  std::string header = R"({"a": {"dtype": "F32", "shape": [1]}})";
  EXPECT_NE(open_error(dir, encode_with_header(header, std::string(4, '\0')))
                .find("needs dtype, shape and data_offsets"),
            std::string::npos);
}

TEST(Safetensors, MissingFile) {
  EXPECT_THROW(SafetensorsFile("/nonexistent/model.safetensors"), std::runtime_error);
}

void write_index(const fs::path& dir, const nlohmann::json& weight_map) {
  nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}};
  write_bytes(dir / "model.safetensors.index.json", index.dump());
}

TEST(WeightStore, ShardedCheckpoint) {
  TempDir dir;
  write_bytes(dir.path() / "model-00001-of-00002.safetensors",
              encode_safetensors({f32_tensor("x", {1}, {3.0f})}));
  write_bytes(dir.path() / "model-00002-of-00002.safetensors",
              encode_safetensors({f32_tensor("y", {2}, {4.0f, 5.0f})}));
  write_index(dir.path(), {{"x", "model-00001-of-00002.safetensors"},
                           {"y", "model-00002-of-00002.safetensors"}});
  WeightStore store = WeightStore::open(dir.path().string());
  EXPECT_EQ(store.names(), (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(store.get("x").ptr<float>()[0], 3.0f);
  EXPECT_EQ(store.get("y").ptr<float>()[1], 5.0f);
  try {
    store.get("z");
    FAIL() << "expected a missing-tensor error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("'z'"), std::string::npos) << e.what();
  }
}

TEST(WeightStore, ShardMissingFromIndex) {
  TempDir dir;
  write_bytes(dir.path() / "model-00001-of-00002.safetensors",
              encode_safetensors({f32_tensor("x", {1}, {3.0f})}));
  write_index(dir.path(), {{"x", "model-00001-of-00002.safetensors"},
                           {"y", "model-00002-of-00002.safetensors"}});
  try {
    WeightStore::open(dir.path().string());
    FAIL() << "expected a missing-shard error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("shard 'model-00002-of-00002.safetensors'"),
              std::string::npos)
        << e.what();
  }
}

TEST(WeightStore, DirectoryWithoutWeights) {
  TempDir dir;
  EXPECT_THROW(WeightStore::open(dir.path().string()), std::runtime_error);
}

TEST(WeightStore, DuplicateTensorAcrossFiles) {
  TempDir dir;
  write_bytes(dir.path() / "a.safetensors", encode_safetensors({f32_tensor("x", {1}, {1.0f})}));
  write_bytes(dir.path() / "b.safetensors", encode_safetensors({f32_tensor("x", {1}, {2.0f})}));
  EXPECT_THROW(WeightStore::open(dir.path().string()), std::runtime_error);
}

// Memory only: weight loading needs nothing else, so these tests do not wait on the CPU kernels.
class HostMemoryBackend final : public Backend {
 public:
  DeviceType device_type() const override { return DeviceType::kCpu; }
  const char* name() const override { return "host-memory"; }
  DType compute_dtype() const override { return DType::kF32; }
  Buffer allocate(size_t nbytes) override {
    ++num_allocations;
    return Buffer(std::malloc(nbytes == 0 ? 1 : nbytes), nbytes, [](void* p) { std::free(p); });
  }
  void copy_from_host(Tensor dst, const void* src) override {
    std::memcpy(dst.data, src, dst.nbytes());
  }
  void copy_to_host(void* dst, Tensor src) override { std::memcpy(dst, src.data, src.nbytes()); }
  void embedding(Tensor, Tensor, Tensor) override { unused(); }
  void rms_norm(Tensor, Tensor, Tensor, float) override { unused(); }
  void add_rms_norm(Tensor, Tensor, Tensor, float) override { unused(); }
  void linear(Tensor, Tensor, Tensor, const Tensor*) override { unused(); }
  void rope_and_cache(Tensor, Tensor, const QKNorm*, Tensor, const AttentionMetadata&,
                      KVCacheLayer) override {
    unused();
  }
  void attention(Tensor, Tensor, KVCacheLayer, const AttentionMetadata&, float,
                 std::optional<int>) override {
    unused();
  }
  void silu_and_mul(Tensor, Tensor) override { unused(); }
  void gather_rows(Tensor, Tensor, Tensor) override { unused(); }

  int num_allocations = 0;

 private:
  [[noreturn]] static void unused() { throw std::logic_error("not a kernel backend"); }
};

// A tiny Llama: vocab 16, hidden 8, intermediate 12, 1 layer (or more), 2 query heads, 1 kv
// head, D 4.
ModelConfig tiny_config(const std::string& architecture, bool tied, int num_layers = 1) {
  nlohmann::json json = {{"architectures", {architecture}},
                         {"vocab_size", 16},
                         {"hidden_size", 8},
                         {"intermediate_size", 12},
                         {"num_hidden_layers", num_layers},
                         {"num_attention_heads", 2},
                         {"num_key_value_heads", 1},
                         {"tie_word_embeddings", tied},
                         {"torch_dtype", "bfloat16"}};
  return ModelConfig::from_json(json.dump());
}

// Distinct, bf16-exact values so that any mixed-up row or tensor shows.
std::vector<float> pattern(int64_t n, float base) {
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = base + static_cast<float>(i % 64) * 0.125f;
  return v;
}

std::vector<RawTensor> tiny_checkpoint(const ModelConfig& c) {
  const int64_t h = c.hidden_size, i = c.intermediate_size, v = c.vocab_size;
  const int64_t q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim;
  std::vector<RawTensor> t = {
      bf16_tensor("model.embed_tokens.weight", {v, h}, pattern(v * h, 1)),
      bf16_tensor("model.norm.weight", {h}, pattern(h, 11)),
  };
  if (!c.tie_word_embeddings) {
    t.push_back(bf16_tensor("lm_head.weight", {v, h}, pattern(v * h, 12)));
  }
  for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
    const std::string l = "model.layers." + std::to_string(layer) + ".";
    for (RawTensor& tensor : std::vector<RawTensor>{
             bf16_tensor(l + "input_layernorm.weight", {h}, pattern(h, 2)),
             bf16_tensor(l + "self_attn.q_proj.weight", {q, h}, pattern(q * h, 3)),
             bf16_tensor(l + "self_attn.k_proj.weight", {kv, h}, pattern(kv * h, 4)),
             bf16_tensor(l + "self_attn.v_proj.weight", {kv, h}, pattern(kv * h, 5)),
             bf16_tensor(l + "self_attn.o_proj.weight", {h, q}, pattern(h * q, 6)),
             bf16_tensor(l + "post_attention_layernorm.weight", {h}, pattern(h, 7)),
             bf16_tensor(l + "mlp.gate_proj.weight", {i, h}, pattern(i * h, 8)),
             bf16_tensor(l + "mlp.up_proj.weight", {i, h}, pattern(i * h, 9)),
             bf16_tensor(l + "mlp.down_proj.weight", {h, i}, pattern(h * i, 10))}) {
      t.push_back(std::move(tensor));
    }
    if (c.qkv_bias) {
      t.push_back(bf16_tensor(l + "self_attn.q_proj.bias", {q}, pattern(q, 13)));
      t.push_back(bf16_tensor(l + "self_attn.k_proj.bias", {kv}, pattern(kv, 14)));
      t.push_back(bf16_tensor(l + "self_attn.v_proj.bias", {kv}, pattern(kv, 15)));
    }
    if (c.qk_norm) {
      t.push_back(
          bf16_tensor(l + "self_attn.q_norm.weight", {c.head_dim}, pattern(c.head_dim, 16)));
      t.push_back(
          bf16_tensor(l + "self_attn.k_norm.weight", {c.head_dim}, pattern(c.head_dim, 17)));
    }
  }
  return t;
}

std::vector<float> as_floats(const Tensor& t) {
  std::vector<float> out(t.numel());
  for (int64_t i = 0; i < t.numel(); ++i) {
    out[i] = t.dtype == DType::kF32 ? t.ptr<float>()[i] : bf16_to_float(t.ptr<uint16_t>()[i]);
  }
  return out;
}

const Tensor& dense_weight(const std::unique_ptr<LinearMethod>& linear) {
  return dynamic_cast<const DenseLinear&>(*linear).weight();
}

DecoderWeights load_tiny(const TempDir& dir, const ModelConfig& config, const std::string& dtype,
                         Backend& backend) {
  LoadOptions options;
  options.model_dir = dir.path().string();
  options.dtype = dtype;
  return load_decoder_weights(config, DecoderWeightNames{}, options, backend);
}

TEST(WeightLoading, AutoDtypeMapsTheCheckpointWithoutCopies) {
  TempDir dir;
  ModelConfig config = tiny_config("LlamaForCausalLM", false);
  write_bytes(dir.path() / "model.safetensors", encode_safetensors(tiny_checkpoint(config)));
  HostMemoryBackend backend;
  DecoderWeights w = load_tiny(dir, config, "auto", backend);
  const Tensor& o = dense_weight(w.layers[0].o_proj);
  EXPECT_EQ(o.dtype, DType::kBF16);
  EXPECT_EQ(o.data, w.storage.checkpoint->get("model.layers.0.self_attn.o_proj.weight").data);
  EXPECT_EQ(w.embed_tokens.data, w.storage.checkpoint->get("model.embed_tokens.weight").data);
  EXPECT_EQ(as_floats(dense_weight(w.lm_head)), pattern(16 * 8, 12));
  // Norm weights always become fp32.
  EXPECT_EQ(w.layers[0].input_norm.dtype, DType::kF32);
  EXPECT_EQ(as_floats(w.layers[0].input_norm), pattern(8, 2));
  EXPECT_EQ(as_floats(w.final_norm), pattern(8, 11));
}

TEST(WeightLoading, GateAndUpAreStackedGateFirst) {
  TempDir dir;
  ModelConfig config = tiny_config("LlamaForCausalLM", false);
  write_bytes(dir.path() / "model.safetensors", encode_safetensors(tiny_checkpoint(config)));
  HostMemoryBackend backend;
  DecoderWeights w = load_tiny(dir, config, "auto", backend);
  const Tensor& gate_up = dense_weight(w.layers[0].gate_up_proj);
  EXPECT_EQ(gate_up.shape, (std::vector<int64_t>{24, 8}));
  std::vector<float> expected = pattern(12 * 8, 8);
  std::vector<float> up = pattern(12 * 8, 9);
  expected.insert(expected.end(), up.begin(), up.end());
  EXPECT_EQ(as_floats(gate_up), expected);
}

std::vector<float> concat(std::vector<std::vector<float>> parts) {
  std::vector<float> all;
  for (const std::vector<float>& part : parts) all.insert(all.end(), part.begin(), part.end());
  return all;
}

// q rows, then k rows, then v rows, in a buffer of their own (the mapping holds them apart);
// Qwen2's three biases likewise, in fp32.
TEST(WeightLoading, QkvStackedQThenKThenV) {
  for (const char* dtype : {"auto", "float32"}) {
    TempDir dir;
    ModelConfig config = tiny_config("Qwen2ForCausalLM", false);
    write_bytes(dir.path() / "model.safetensors", encode_safetensors(tiny_checkpoint(config)));
    HostMemoryBackend backend;
    DecoderWeights w = load_tiny(dir, config, dtype, backend);
    const LinearMethod& qkv_proj = *w.layers[0].qkv_proj;
    EXPECT_EQ(qkv_proj.num_out_features(), 16);  // (2 + 2 * 1) heads of 4
    EXPECT_EQ(qkv_proj.num_in_features(), 8);
    const Tensor& qkv = dense_weight(w.layers[0].qkv_proj);
    EXPECT_EQ(qkv.dtype, std::string(dtype) == "auto" ? DType::kBF16 : DType::kF32);
    EXPECT_EQ(as_floats(qkv), concat({pattern(8 * 8, 3), pattern(4 * 8, 4), pattern(4 * 8, 5)}));
    const Tensor q_in_checkpoint =
        w.storage.checkpoint->get("model.layers.0.self_attn.q_proj.weight");
    EXPECT_NE(qkv.data, q_in_checkpoint.data);
    const Tensor* bias = dynamic_cast<const DenseLinear&>(qkv_proj).bias();
    ASSERT_NE(bias, nullptr);
    EXPECT_EQ(bias->dtype, DType::kF32);
    EXPECT_EQ(as_floats(*bias), concat({pattern(8, 13), pattern(4, 14), pattern(4, 15)}));
  }
}

TEST(WeightLoading, Float32ConvertsEveryMatrix) {
  TempDir dir;
  ModelConfig config = tiny_config("LlamaForCausalLM", true);
  write_bytes(dir.path() / "model.safetensors", encode_safetensors(tiny_checkpoint(config)));
  HostMemoryBackend backend;
  DecoderWeights w = load_tiny(dir, config, "float32", backend);
  const Tensor& o = dense_weight(w.layers[0].o_proj);
  EXPECT_EQ(o.dtype, DType::kF32);
  EXPECT_EQ(as_floats(o), pattern(8 * 8, 6));
  // Tied: lm_head is the (converted) embedding itself.
  EXPECT_EQ(dense_weight(w.lm_head).data, w.embed_tokens.data);
  EXPECT_EQ(w.embed_tokens.dtype, DType::kF32);
}

TEST(WeightLoading, Qwen2BiasesAndQwen3HeadNorms) {
  for (const char* architecture : {"Qwen2ForCausalLM", "Qwen3ForCausalLM"}) {
    TempDir dir;
    ModelConfig config = tiny_config(architecture, false);
    write_bytes(dir.path() / "model.safetensors", encode_safetensors(tiny_checkpoint(config)));
    HostMemoryBackend backend;
    DecoderWeights w = load_tiny(dir, config, "auto", backend);
    const DecoderLayerWeights& layer = w.layers[0];
    EXPECT_EQ(layer.qk_norm.has_value(), config.qk_norm) << architecture;
    EXPECT_EQ(dynamic_cast<const DenseLinear&>(*layer.qkv_proj).bias() != nullptr, config.qkv_bias)
        << architecture;
    if (!config.qk_norm) continue;
    EXPECT_EQ(as_floats(layer.qk_norm->q_weight), pattern(4, 16));
    EXPECT_EQ(as_floats(layer.qk_norm->k_weight), pattern(4, 17));
    EXPECT_EQ(layer.qk_norm->eps, config.rms_norm_eps);
  }
}

TEST(WeightLoading, ShapeMismatchNamesTensorAndShapes) {
  TempDir dir;
  ModelConfig config = tiny_config("LlamaForCausalLM", false);
  std::vector<RawTensor> tensors = tiny_checkpoint(config);
  for (RawTensor& tensor : tensors) {
    if (tensor.name == "model.layers.0.self_attn.k_proj.weight") {
      tensor = bf16_tensor(tensor.name, {8, 8}, pattern(64, 4));
    }
  }
  write_bytes(dir.path() / "model.safetensors", encode_safetensors(tensors));
  HostMemoryBackend backend;
  try {
    load_tiny(dir, config, "auto", backend);
    FAIL() << "expected a shape error";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(),
                 "weight 'model.layers.0.self_attn.k_proj.weight' has shape [8, 8] but the config "
                 "expects [4, 8]");
  }
}

TEST(WeightLoading, MissingTensorIsNamed) {
  TempDir dir;
  ModelConfig config = tiny_config("LlamaForCausalLM", false);
  std::vector<RawTensor> tensors = tiny_checkpoint(config);
  std::erase_if(tensors, [](const RawTensor& t) { return t.name == "lm_head.weight"; });
  write_bytes(dir.path() / "model.safetensors", encode_safetensors(tensors));
  HostMemoryBackend backend;
  try {
    load_tiny(dir, config, "auto", backend);
    FAIL() << "expected a missing-tensor error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("'lm_head.weight'"), std::string::npos) << e.what();
  }
}

TEST(WeightLoading, UnknownDtypeAndLoadFormat) {
  ModelConfig config = tiny_config("LlamaForCausalLM", false);
  HostMemoryBackend backend;
  LoadOptions options;
  options.load_format = "dummy";
  options.dtype = "float64";
  EXPECT_THROW(load_decoder_weights(config, {}, options, backend), std::invalid_argument);
  options.dtype = "auto";
  options.load_format = "gguf";
  EXPECT_THROW(load_decoder_weights(config, {}, options, backend), std::invalid_argument);
}

// The tiny checkpoint of `layers` layers plus `extra` tensors, loaded in its own dtype.
DecoderWeights load_with(const std::vector<RawTensor>& extra, int layers = 1) {
  TempDir dir;
  ModelConfig config = tiny_config("LlamaForCausalLM", false, layers);
  std::vector<RawTensor> tensors = tiny_checkpoint(config);
  tensors.insert(tensors.end(), extra.begin(), extra.end());
  write_bytes(dir.path() / "model.safetensors", encode_safetensors(tensors));
  HostMemoryBackend backend;
  return load_tiny(dir, config, "auto", backend);
}

void expect_scales(const std::vector<KVCacheScales>& scales,
                   const std::vector<std::pair<float, float>>& expected) {
  ASSERT_EQ(scales.size(), expected.size());
  for (size_t i = 0; i < scales.size(); ++i) {
    EXPECT_EQ(scales[i].k, expected[i].first) << "layer " << i;
    EXPECT_EQ(scales[i].v, expected[i].second) << "layer " << i;
  }
}

// The names quantizers write (llm-compressor, ModelOpt, a single kv_scale), shapes [] and [1],
// any float dtype.
TEST(KvCacheScales, ReadUnderEveryNameQuantizersWrite) {
  const std::string a = "model.layers.0.self_attn.";
  expect_scales(
      load_with({f32_tensor(a + "k_scale", {}, {0.5f}), f32_tensor(a + "v_scale", {}, {0.25f})})
          .kv_cache_scales,
      {{0.5f, 0.25f}});
  expect_scales(load_with({bf16_tensor(a + "k_proj.k_scale", {1}, {2.0f}),
                           bf16_tensor(a + "v_proj.v_scale", {1}, {0.125f})})
                    .kv_cache_scales,
                {{2.0f, 0.125f}});
  expect_scales(load_with({f32_tensor(a + "kv_scale", {}, {0.75f})}).kv_cache_scales,
                {{0.75f, 0.75f}});
  // One of the two alone stands for both.
  expect_scales(load_with({f32_tensor(a + "v_scale", {}, {3.0f})}).kv_cache_scales, {{3.0f, 3.0f}});
}

TEST(KvCacheScales, NoneWithoutScaleTensorsOrWithDummyWeights) {
  EXPECT_TRUE(load_with({}).kv_cache_scales.empty());
  HostMemoryBackend backend;
  LoadOptions options;
  options.load_format = "dummy";
  EXPECT_TRUE(load_decoder_weights(tiny_config("LlamaForCausalLM", false, 2), {}, options, backend)
                  .kv_cache_scales.empty());
}

// A layer without scales gets 1 when another has some (vLLM's default for a missing scale).
TEST(KvCacheScales, LayersWithoutScalesUseOne) {
  const std::string a = "model.layers.1.self_attn.";
  DecoderWeights w = load_with(
      {f32_tensor(a + "k_scale", {1}, {0.5f}), f32_tensor(a + "v_scale", {1}, {4.0f})}, 2);
  expect_scales(w.kv_cache_scales, {{1.0f, 1.0f}, {0.5f, 4.0f}});
}

TEST(KvCacheScales, BadScalesAreNamed) {
  const std::string k = "model.layers.0.self_attn.k_scale";
  const std::vector<std::pair<RawTensor, std::string>> cases = {
      {f32_tensor(k, {}, {-0.5f}), "K/V cache scale '" + k +
                                       "' is -0.500000 but must be "
                                       "positive and finite, with a finite reciprocal"},
      {f32_tensor(k, {}, {0.0f}), "is 0.000000 but must be positive"},
      {f32_tensor(k, {}, {INFINITY}), "is inf but must be positive"},
      {f32_tensor(k, {}, {1e-39f}), "with a finite reciprocal"},  // 1 / denormal overflows
      {f32_tensor(k, {2}, {0.5f, 0.5f}), "weight '" + k +
                                             "' must be one float32, bfloat16 or "
                                             "float16 value (shape [] or [1]), got dtype float32 "
                                             "and shape [2]"},
      {{k, "I32", {}, {1, 0, 0, 0}}, "got dtype int32 and shape []"},
  };
  for (const auto& [tensor, message] : cases) {
    try {
      load_with({tensor});
      ADD_FAILURE() << "expected an error containing: " << message;
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
    }
  }
}

TEST(DummyWeights, FiniteRightShapesSeeded) {
  ModelConfig config = tiny_config("Qwen3ForCausalLM", false);
  HostMemoryBackend backend;
  LoadOptions options;
  options.load_format = "dummy";
  options.seed = 5;
  DecoderWeights w = load_decoder_weights(config, {}, options, backend);
  EXPECT_EQ(w.embed_tokens.dtype, DType::kBF16);  // "auto": config.json's torch_dtype
  EXPECT_EQ(w.embed_tokens.shape, (std::vector<int64_t>{16, 8}));
  const DecoderLayerWeights& layer = w.layers[0];
  EXPECT_EQ(dense_weight(layer.qkv_proj).shape, (std::vector<int64_t>{16, 8}));
  EXPECT_EQ(dense_weight(layer.gate_up_proj).shape, (std::vector<int64_t>{24, 8}));
  EXPECT_EQ(dense_weight(layer.down_proj).shape, (std::vector<int64_t>{8, 12}));
  EXPECT_EQ(dense_weight(w.lm_head).shape, (std::vector<int64_t>{16, 8}));
  EXPECT_EQ(as_floats(layer.input_norm), std::vector<float>(8, 1.0f));
  EXPECT_EQ(as_floats(layer.qk_norm->q_weight), std::vector<float>(4, 1.0f));
  std::vector<float> values = as_floats(dense_weight(layer.gate_up_proj));
  double sum_sq = 0;
  for (float v : values) {
    ASSERT_TRUE(std::isfinite(v));
    sum_sq += v * v;
  }
  double std_dev = std::sqrt(sum_sq / values.size());
  EXPECT_GT(std_dev, 0.015);
  EXPECT_LT(std_dev, 0.025);

  DecoderWeights same = load_decoder_weights(config, {}, options, backend);
  EXPECT_EQ(as_floats(dense_weight(same.layers[0].gate_up_proj)), values);
  options.seed = 6;
  options.dtype = "float32";
  DecoderWeights other = load_decoder_weights(config, {}, options, backend);
  EXPECT_EQ(other.embed_tokens.dtype, DType::kF32);
  EXPECT_NE(as_floats(dense_weight(other.layers[0].gate_up_proj)), values);
}

// Dummy q, k and v are each generated from their own name, as when they were three matrices:
// the stacked rows equal what matrix() gives for each name, so dummy models keep their values.
TEST(DummyWeights, StackedQkvKeepsEachPartsValues) {
  ModelConfig config = tiny_config("Qwen2ForCausalLM", false);
  HostMemoryBackend backend;
  LoadOptions options;
  options.load_format = "dummy";
  options.seed = 7;
  DecoderWeights w = load_decoder_weights(config, {}, options, backend);
  WeightLoader loader(options, config.torch_dtype, backend);
  const std::string l = "model.layers.0.self_attn.";
  std::vector<float> expected = concat({as_floats(loader.matrix(l + "q_proj.weight", {8, 8})),
                                        as_floats(loader.matrix(l + "k_proj.weight", {4, 8})),
                                        as_floats(loader.matrix(l + "v_proj.weight", {4, 8}))});
  EXPECT_EQ(as_floats(dense_weight(w.layers[0].qkv_proj)), expected);
  std::vector<float> expected_bias =
      concat({as_floats(loader.fp32_vector(l + "q_proj.bias", 8, std::nullopt)),
              as_floats(loader.fp32_vector(l + "k_proj.bias", 4, std::nullopt)),
              as_floats(loader.fp32_vector(l + "v_proj.bias", 4, std::nullopt))});
  const Tensor* bias = dynamic_cast<const DenseLinear&>(*w.layers[0].qkv_proj).bias();
  ASSERT_NE(bias, nullptr);
  EXPECT_EQ(as_floats(*bias), expected_bias);
  // q, k and v differ: each part came from its own name, not one stream.
  EXPECT_NE(std::vector<float>(expected.begin(), expected.begin() + 32),
            std::vector<float>(expected.begin() + 64, expected.begin() + 96));
}

// One sequence on the CPU backend: runs tokens [begin, end) of `ids` as one step over a paged
// cache (block_size 4, blocks 1, 2, ...) and returns the logits of every token of the step.
class SingleSequenceRunner {
 public:
  SingleSequenceRunner(Model& model, int num_blocks) : model_(model) {
    const ModelConfig& c = model.config();
    const size_t layer_size =
        static_cast<size_t>(num_blocks) * kBlockSize * c.num_key_value_heads * c.head_dim;
    memory_.assign(2 * c.num_hidden_layers, std::vector<float>(layer_size, 0.0f));
    std::vector<int64_t> shape = {num_blocks, kBlockSize, c.num_key_value_heads, c.head_dim};
    for (int l = 0; l < c.num_hidden_layers; ++l) {
      cache_.push_back({Tensor(memory_[2 * l].data(), DType::kF32, shape),
                        Tensor(memory_[2 * l + 1].data(), DType::kF32, shape)});
    }
    for (int b = 1; b < num_blocks; ++b) block_table_.push_back(b);
  }

  std::vector<float> step(const std::vector<int32_t>& ids, int begin, int end) {
    const int num_tokens = end - begin;
    std::vector<int32_t> step_ids(ids.begin() + begin, ids.begin() + end), positions, slots, rows;
    for (int p = begin; p < end; ++p) {
      positions.push_back(p);
      slots.push_back(block_table_[p / kBlockSize] * kBlockSize + p % kBlockSize);
      rows.push_back(p - begin);
    }
    std::vector<int32_t> query_start_loc = {0, num_tokens}, seq_lens = {end};
    AttentionMetadata meta;
    meta.num_seqs = 1;
    meta.max_query_len = num_tokens;
    meta.max_seq_len = end;
    meta.max_blocks_per_seq = static_cast<int>(block_table_.size());
    meta.query_start_loc = Tensor(query_start_loc.data(), DType::kI32, {2});
    meta.seq_lens = Tensor(seq_lens.data(), DType::kI32, {1});
    meta.block_table =
        Tensor(block_table_.data(), DType::kI32, {1, static_cast<int64_t>(block_table_.size())});
    meta.slot_mapping = Tensor(slots.data(), DType::kI32, {num_tokens});
    meta.positions = Tensor(positions.data(), DType::kI32, {num_tokens});
    ForwardInputs inputs{Tensor(step_ids.data(), DType::kI32, {num_tokens}), &meta,
                         Tensor(rows.data(), DType::kI32, {num_tokens})};
    const int vocab = model_.config().vocab_size;
    std::vector<float> logits(static_cast<size_t>(num_tokens) * vocab);
    model_.forward(inputs, cache_, Tensor(logits.data(), DType::kF32, {num_tokens, vocab}));
    return logits;
  }

 private:
  static constexpr int kBlockSize = 4;
  Model& model_;
  std::vector<std::vector<float>> memory_;
  std::vector<KVCacheLayer> cache_;
  std::vector<int32_t> block_table_;
};

// The same tokens in one prefill and in a chunk + single-token decodes must give the same
// logits: the paged cache, positions and the fused residual path all agree across steps.
TEST(DummyModel, ChunkedStepsMatchOnePrefillOnCpuBackend) {
  for (const char* architecture : {"LlamaForCausalLM", "Qwen3ForCausalLM"}) {
    ModelConfig config = tiny_config(architecture, true);
    std::unique_ptr<Backend> backend = make_cpu_backend(1);
    LoadOptions options;
    options.load_format = "dummy";
    options.dtype = "float32";
    std::unique_ptr<Model> model = load_model(config, options, *backend);
    model->allocate_workspace(16, 16);
    std::vector<int32_t> ids = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3};
    std::vector<float> whole = SingleSequenceRunner(*model, 8).step(ids, 0, 10);
    SingleSequenceRunner chunked(*model, 8);
    std::vector<float> pieces = chunked.step(ids, 0, 6);
    for (int t = 6; t < 10; ++t) {
      std::vector<float> row = chunked.step(ids, t, t + 1);
      pieces.insert(pieces.end(), row.begin(), row.end());
    }
    ASSERT_EQ(whole.size(), pieces.size());
    for (size_t i = 0; i < whole.size(); ++i) {
      ASSERT_TRUE(std::isfinite(whole[i])) << architecture;
      ASSERT_NEAR(whole[i], pieces[i], 1e-5) << architecture << " index " << i;
    }
  }
}

TEST(DummyModel, ForwardRejectsOversizedStep) {
  ModelConfig config = tiny_config("LlamaForCausalLM", false);
  std::unique_ptr<Backend> backend = make_cpu_backend(1);
  LoadOptions options;
  options.load_format = "dummy";
  std::unique_ptr<Model> model = load_model(config, options, *backend);
  model->allocate_workspace(4, 4);
  std::vector<int32_t> ids = {1, 2, 3, 4, 5, 6};
  EXPECT_THROW(SingleSequenceRunner(*model, 8).step(ids, 0, 6), std::invalid_argument);
}

}  // namespace
}  // namespace engine
