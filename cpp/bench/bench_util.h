#pragma once
// engine_bench's harness: owning device arrays, event timing (median of repetitions after a
// warm-up, L2 flushed before each), the filter, and the result table and JSON.

#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "backend/tensor.h"

namespace engine::bench {

struct Options {
  std::string only;  // run only cases whose "kernel shape" contains this; empty: all
  int reps = 50;
  int warmup = 5;
  std::optional<std::string> json_path;
};

// Parses argv; throws std::invalid_argument naming the bad flag. Sets `help` on --help.
Options parse_options(int argc, char** argv, bool& help);
const char* usage();

// Device memory for one tensor, freed on destruction; filled with random values on request.
class DeviceTensor {
 public:
  DeviceTensor(DType dtype, std::vector<int64_t> shape);
  DeviceTensor(const DeviceTensor&) = delete;
  DeviceTensor& operator=(const DeviceTensor&) = delete;
  DeviceTensor(DeviceTensor&& other) noexcept : tensor_(std::move(other.tensor_)) {
    other.tensor_.data = nullptr;
  }
  DeviceTensor& operator=(DeviceTensor&&) = delete;
  ~DeviceTensor();
  // Uniform in [lo, hi); each call draws a fresh seed.
  DeviceTensor& random(float lo = -1.0f, float hi = 1.0f);
  void upload(const void* host);  // nbytes() bytes
  const Tensor& t() const { return tensor_; }

 private:
  Tensor tensor_;
};

// One i32 tensor uploaded from the host.
DeviceTensor upload_i32(const std::vector<int32_t>& values, std::vector<int64_t> shape);

// The two ceilings every ratio is taken against, measured in the same run.
struct Ceilings {
  double copy_gbps = 0;    // device-to-device cudaMemcpy, bytes read + written
  double gemm_tflops = 0;  // cuBLASLt bf16 8192^3 through engine::cuda::Gemm
};

struct Result {
  std::string kernel;
  std::string shape;
  double time_us = 0;  // median
  std::optional<double> gbps;
  std::optional<double> tflops;
  std::string note;
};

class Bench {
 public:
  explicit Bench(Options options);
  ~Bench();
  Bench(const Bench&) = delete;
  Bench& operator=(const Bench&) = delete;

  const Options& options() const { return options_; }
  bool selected(const std::string& kernel, const std::string& shape) const;
  // Median device time of fn() in µs: warm-up calls, then reps calls each bracketed by events,
  // each preceded by an L2 flush (outside the events) unless flush_l2 is false. The flush also
  // keeps the GPU busy while the host enqueues the next call, so launch gaps stay out.
  double time_device_us(const std::function<void()>& fn, bool flush_l2 = true);
  // Median host wall time of fn() in µs; prepare() runs before each call, untimed.
  double time_host_us(const std::function<void()>& prepare, const std::function<void()>& fn);

  // Records a result with its byte and flop counts (0: not meaningful for this kernel).
  void add(std::string kernel, std::string shape, double time_us, double bytes, double flops,
           std::string note = "");
  void set_ceilings(const Ceilings& ceilings) { ceilings_ = ceilings; }
  void print_table() const;
  void write_json(const std::string& path) const;

 private:
  Options options_;
  Ceilings ceilings_;
  std::vector<Result> results_;
  void* flush_ = nullptr;
  size_t flush_bytes_ = 0;
  std::string device_name_;
};

}  // namespace engine::bench
