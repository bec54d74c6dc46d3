#include "bench_util.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <stdexcept>

#include "common/cuda_check.h"
#include "device_fill.h"

namespace engine::bench {
namespace {

uint64_t next_seed() {
  static uint64_t seed = 0x5eed;
  return ++seed;
}

double median(std::vector<double> values) {
  if (values.empty()) throw std::logic_error("median of no values");
  std::sort(values.begin(), values.end());
  const size_t mid = values.size() / 2;
  return values.size() % 2 ? values[mid] : 0.5 * (values[mid - 1] + values[mid]);
}

int parse_int(const std::string& flag, const std::string& value, int min_value) {
  size_t used = 0;
  int parsed = 0;
  try {
    parsed = std::stoi(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != value.size() || parsed < min_value) {
    throw std::invalid_argument(flag + " is '" + value +
                                "' but must be an integer >= " + std::to_string(min_value));
  }
  return parsed;
}

std::string fmt(const char* format, double value) {
  char text[64];
  std::snprintf(text, sizeof(text), format, value);
  return text;
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (static_cast<unsigned char>(c) < 0x20) {  // control characters must be escaped
      char escaped[8];
      std::snprintf(escaped, sizeof(escaped), "\\u%04x", static_cast<unsigned>(c));
      out += escaped;
      continue;
    }
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

// A JSON number; a non-finite value (a zero time, a missing ceiling) is null, since JSON has
// no NaN or Infinity.
std::string json_number(double value) {
  if (!std::isfinite(value)) return "null";
  char text[64];
  std::snprintf(text, sizeof(text), "%.9g", value);
  return text;
}

}  // namespace

const char* usage() {
  return "usage: engine_bench [--only SUBSTRING] [--reps N] [--warmup N] [--json PATH]\n"
         "  Times each CUDA kernel of a Llama-3-8B-shaped layer (bf16) and the CPU sampler;\n"
         "  prints achieved GB/s and TFLOP/s against a device-to-device copy and a cuBLASLt\n"
         "  8192^3 GEMM measured in the same run.\n"
         "  --only   run only cases whose 'kernel shape' contains SUBSTRING (ceilings always run)\n"
         "  --reps   timed repetitions per case, median reported (default 50)\n"
         "  --warmup untimed calls before timing (default 5)\n"
         "  --json   also write the results to PATH\n";
}

Options parse_options(int argc, char** argv, bool& help) {
  Options options;
  help = false;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      help = true;
      continue;
    }
    if (flag != "--only" && flag != "--reps" && flag != "--warmup" && flag != "--json") {
      throw std::invalid_argument("unknown flag '" + flag + "'");
    }
    if (i + 1 >= argc) throw std::invalid_argument(flag + " needs a value");
    const std::string value = argv[++i];
    if (flag == "--only") options.only = value;
    if (flag == "--reps") options.reps = parse_int(flag, value, 1);
    if (flag == "--warmup") options.warmup = parse_int(flag, value, 1);
    if (flag == "--json") options.json_path = value;
  }
  return options;
}

DeviceTensor::DeviceTensor(DType dtype, std::vector<int64_t> shape)
    : tensor_(nullptr, dtype, std::move(shape), DeviceType::kCuda) {
  EMBER_CUDA_CHECK(cudaMalloc(&tensor_.data, std::max<size_t>(tensor_.nbytes(), 1)));
}

DeviceTensor::~DeviceTensor() { cudaFree(tensor_.data); }

DeviceTensor& DeviceTensor::random(float lo, float hi) {
  fill_uniform(tensor_, next_seed(), lo, hi, nullptr);
  return *this;
}

void DeviceTensor::upload(const void* host) {
  EMBER_CUDA_CHECK(cudaMemcpy(tensor_.data, host, tensor_.nbytes(), cudaMemcpyHostToDevice));
}

DeviceTensor upload_i32(const std::vector<int32_t>& values, std::vector<int64_t> shape) {
  DeviceTensor t(DType::kI32, std::move(shape));
  if (static_cast<size_t>(t.t().numel()) != values.size()) {
    throw std::invalid_argument("upload_i32: " + std::to_string(values.size()) +
                                " values for shape " + t.t().shape_string());
  }
  t.upload(values.data());
  return t;
}

Bench::Bench(Options options) : options_(std::move(options)) {
  int device = 0;
  EMBER_CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  EMBER_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  device_name_ = prop.name;
  // Twice the L2 (50 MiB on H100, 60 MiB on H200), and never under 256 MiB.
  flush_bytes_ = std::max<size_t>(size_t(2) * prop.l2CacheSize, size_t(256) << 20);
  EMBER_CUDA_CHECK(cudaMalloc(&flush_, flush_bytes_));
  EMBER_CUDA_CHECK(cudaMemset(flush_, 0x5a, flush_bytes_));
  std::printf("device: %s, %d SMs, L2 %d MiB, %.1f GiB; reps %d (median), warm-up %d\n", prop.name,
              prop.multiProcessorCount, prop.l2CacheSize >> 20,
              double(prop.totalGlobalMem) / double(1ull << 30), options_.reps, options_.warmup);
}

Bench::~Bench() { cudaFree(flush_); }

bool Bench::selected(const std::string& kernel, const std::string& shape) const {
  return options_.only.empty() || (kernel + " " + shape).find(options_.only) != std::string::npos;
}

double Bench::time_device_us(const std::function<void()>& fn, bool flush_l2) {
  for (int i = 0; i < options_.warmup; ++i) fn();
  EMBER_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<cudaEvent_t> events(2 * options_.reps);
  for (auto& e : events) EMBER_CUDA_CHECK(cudaEventCreate(&e));
  for (int r = 0; r < options_.reps; ++r) {
    if (flush_l2) read_through(flush_, flush_bytes_, nullptr);
    EMBER_CUDA_CHECK(cudaEventRecord(events[2 * r], nullptr));
    fn();
    EMBER_CUDA_CHECK(cudaEventRecord(events[2 * r + 1], nullptr));
  }
  EMBER_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<double> times_us;
  for (int r = 0; r < options_.reps; ++r) {
    float ms = 0;
    EMBER_CUDA_CHECK(cudaEventElapsedTime(&ms, events[2 * r], events[2 * r + 1]));
    times_us.push_back(1e3 * ms);
  }
  for (auto& e : events) EMBER_CUDA_CHECK(cudaEventDestroy(e));
  return median(times_us);
}

double Bench::time_host_us(const std::function<void()>& prepare, const std::function<void()>& fn) {
  for (int i = 0; i < options_.warmup; ++i) {
    prepare();
    fn();
  }
  std::vector<double> times_us;
  for (int r = 0; r < options_.reps; ++r) {
    prepare();
    const auto start = std::chrono::steady_clock::now();
    fn();
    const auto stop = std::chrono::steady_clock::now();
    times_us.push_back(std::chrono::duration<double, std::micro>(stop - start).count());
  }
  return median(times_us);
}

void Bench::add(std::string kernel, std::string shape, double time_us, double bytes, double flops,
                std::string note) {
  Result r{std::move(kernel), std::move(shape), time_us,
           std::nullopt,      std::nullopt,     std::move(note)};
  if (bytes > 0) r.gbps = bytes / (time_us * 1e3);
  if (flops > 0) r.tflops = flops / (time_us * 1e6);
  // Printed as each case finishes, so a crash later still leaves the numbers so far.
  std::printf("  %-28s %-34s %10.1f us\n", r.kernel.c_str(), r.shape.c_str(), r.time_us);
  std::fflush(stdout);
  results_.push_back(std::move(r));
}

void Bench::print_table() const {
  std::printf("\nceilings (this run): copy %.0f GB/s, GEMM %.1f TFLOP/s\n\n", ceilings_.copy_gbps,
              ceilings_.gemm_tflops);
  std::printf("| %-28s | %-34s | %10s | %8s | %7s | %8s | %7s | %s\n", "kernel", "shape",
              "time (us)", "GB/s", "of copy", "TFLOP/s", "of GEMM", "note |");
  std::printf("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |\n");
  for (const Result& r : results_) {
    const std::string gbps = r.gbps ? fmt("%.0f", *r.gbps) : "-";
    const std::string of_copy = r.gbps ? fmt("%.2f", *r.gbps / ceilings_.copy_gbps) : "-";
    const std::string tflops = r.tflops ? fmt("%.1f", *r.tflops) : "-";
    const std::string of_gemm = r.tflops ? fmt("%.2f", *r.tflops / ceilings_.gemm_tflops) : "-";
    std::printf("| %-28s | %-34s | %10.1f | %8s | %7s | %8s | %7s | %s |\n", r.kernel.c_str(),
                r.shape.c_str(), r.time_us, gbps.c_str(), of_copy.c_str(), tflops.c_str(),
                of_gemm.c_str(), r.note.c_str());
  }
}

void Bench::write_json(const std::string& path) const {
  std::ofstream out(path);
  if (!out) throw std::runtime_error("cannot open --json path '" + path + "' for writing");
  out << "{\n  \"device\": \"" << json_escape(device_name_) << "\",\n  \"reps\": " << options_.reps
      << ",\n  \"warmup\": " << options_.warmup
      << ",\n  \"ceilings\": {\"copy_gbps\": " << json_number(ceilings_.copy_gbps)
      << ", \"gemm_tflops\": " << json_number(ceilings_.gemm_tflops) << "},\n  \"results\": [";
  for (size_t i = 0; i < results_.size(); ++i) {
    const Result& r = results_[i];
    out << (i ? ",\n" : "\n") << "    {\"kernel\": \"" << json_escape(r.kernel)
        << "\", \"shape\": \"" << json_escape(r.shape)
        << "\", \"time_us\": " << json_number(r.time_us);
    if (r.gbps) out << ", \"gbps\": " << json_number(*r.gbps);
    if (r.tflops) out << ", \"tflops\": " << json_number(*r.tflops);
    if (!r.note.empty()) out << ", \"note\": \"" << json_escape(r.note) << "\"";
    out << "}";
  }
  out << "\n  ]\n}\n";
  if (!out) throw std::runtime_error("writing --json path '" + path + "' failed");
}

}  // namespace engine::bench
