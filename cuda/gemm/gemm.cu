#include "gemm/gemm.h"

#include <algorithm>
#include <compare>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/cuda_check.h"
#include "gemm/bias_add.cuh"

namespace engine::cuda {
namespace {

// NVIDIA's cuBLAS guide recommends 32 MiB of workspace on Hopper: enough for the split-K and
// stream-K kernels the heuristic picks for skinny (decode) shapes.
constexpr size_t kWorkspaceBytes = size_t{32} << 20;

// cuBLASLt's default assumption for every pointer; asking for more than this buys nothing.
constexpr uint32_t kMaxAlignmentBytes = 256;

constexpr int kBiasAddThreads = 256;
constexpr int64_t kBiasAddMaxBlocks = 4096;

cudaDataType_t cuda_data_type(DType dtype) {
  switch (dtype) {
    case DType::kBF16:
      return CUDA_R_16BF;
    case DType::kF16:
      return CUDA_R_16F;
    case DType::kF32:
      return CUDA_R_32F;
    default:
      throw std::invalid_argument(std::string("Gemm: no cuBLASLt type for ") + dtype_name(dtype));
  }
}

std::string describe(const char* name, const Tensor& tensor) {
  return std::string(name) + " is " + tensor.shape_string() + " " + dtype_name(tensor.dtype) +
         (tensor.device == DeviceType::kCuda ? "" : " on the CPU");
}

void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument("Gemm::linear: " + message);
}

void check_cuda_matrix(const char* name, const Tensor& tensor) {
  require(tensor.device == DeviceType::kCuda && tensor.dim() == 2 && tensor.defined(),
          describe(name, tensor) + " but must be a 2-D tensor in CUDA memory");
}

void check_linear_args(const Tensor& out, const Tensor& x, const Tensor& weight,
                       const Tensor* bias) {
  check_cuda_matrix("out", out);
  check_cuda_matrix("x", x);
  check_cuda_matrix("weight", weight);
  require(x.dtype == DType::kBF16 || x.dtype == DType::kF16,
          describe("x", x) + " but must be bfloat16 or float16");
  require(weight.dtype == x.dtype,
          describe("weight", weight) + " but must have x's dtype " + dtype_name(x.dtype));
  require(out.dtype == x.dtype || out.dtype == DType::kF32,
          describe("out", out) + " but must be " + dtype_name(x.dtype) + " or float32");
  const int64_t num_tokens = x.size(0), num_out = weight.size(0), num_in = x.size(1);
  require(num_out >= 1 && num_in >= 1,
          describe("weight", weight) + " but must have at least one row and one column");
  require(weight.size(1) == num_in, describe("weight", weight) + " but x is " + x.shape_string() +
                                        ": their last dims must match");
  require(out.size(0) == num_tokens && out.size(1) == num_out,
          describe("out", out) + " but must be [" + std::to_string(num_tokens) + ", " +
              std::to_string(num_out) + "] for x " + x.shape_string() + " and weight " +
              weight.shape_string());
  if (bias == nullptr) return;
  require(bias->device == DeviceType::kCuda && bias->defined() && bias->dim() == 1 &&
              bias->size(0) == num_out && bias->dtype == DType::kF32,
          describe("bias", *bias) + " but must be [" + std::to_string(num_out) +
              "] float32 in CUDA memory");
}

// The largest power of two (up to 256) that divides the address: cuBLASLt picks kernels whose
// vector loads need that alignment, so it is part of what an algorithm was chosen for.
uint32_t alignment_of(const void* ptr) {
  const auto address = reinterpret_cast<uintptr_t>(ptr);
  uint32_t alignment = kMaxAlignmentBytes;
  while (alignment > 1 && address % alignment != 0) alignment /= 2;
  return alignment;
}

// Everything an algorithm choice depends on. T (the token count) varies per step, so a serving
// process accumulates one entry per distinct batch size and layer shape: a few hundred at most.
struct PlanKey {
  int64_t num_tokens, num_out, num_in;
  DType in_dtype, out_dtype;
  bool try_fused_bias;  // a bias was given and out is fp32: the BIAS epilogue can add it
  uint32_t align_weight, align_x, align_out, align_bias;
  auto operator<=>(const PlanKey&) const = default;
};

// unique_ptr deleters for cuBLASLt's opaque handles and cudaMalloc'd memory. NOTE: a status
// returned while destroying cannot be reported from a destructor.
template <auto Destroy>
struct Destroyer {
  template <typename Handle>
  void operator()(Handle handle) const {
    Destroy(handle);
  }
};
template <typename Handle, auto Destroy>
using Owned = std::unique_ptr<std::remove_pointer_t<Handle>, Destroyer<Destroy>>;
using MatmulDesc = Owned<cublasLtMatmulDesc_t, cublasLtMatmulDescDestroy>;
using MatrixLayout = Owned<cublasLtMatrixLayout_t, cublasLtMatrixLayoutDestroy>;
using Preference = Owned<cublasLtMatmulPreference_t, cublasLtMatmulPreferenceDestroy>;

// A cached problem. cuBLASLt is column-major, so row-major out[T, N] = x[T, K] @ weight[N, K]^T
// runs as out^T = weight @ x^T: A = weight read as column-major [K, N] (ld K) with transa = T,
// B = x read as column-major [K, T] (ld K), D = out as column-major [N, T] (ld N). Nothing is
// transposed in memory.
struct Plan {
  bool fused_bias;
  MatmulDesc desc;
  MatrixLayout weight_layout, x_layout, out_layout;
  cublasLtMatmulAlgo_t algo;
};

MatrixLayout make_layout(DType dtype, int64_t rows, int64_t cols, int64_t ld) {
  cublasLtMatrixLayout_t layout = nullptr;
  EMBER_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout, cuda_data_type(dtype),
                                                static_cast<uint64_t>(rows),
                                                static_cast<uint64_t>(cols), ld));
  return MatrixLayout(layout);
}

template <typename T>
void set_desc(const MatmulDesc& desc, cublasLtMatmulDescAttributes_t attribute, const T& value) {
  EMBER_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.get(), attribute, &value, sizeof(T)));
}

template <typename T>
void set_preference(const Preference& pref, cublasLtMatmulPreferenceAttributes_t attribute,
                    const T& value) {
  EMBER_CUBLAS_CHECK(
      cublasLtMatmulPreferenceSetAttribute(pref.get(), attribute, &value, sizeof(T)));
}

void launch_bias_add(const Tensor& out, const float* bias, cudaStream_t stream) {
  const int64_t num_rows = out.size(0), num_cols = out.size(1);
  const int64_t num_blocks =
      std::min(kBiasAddMaxBlocks, (num_rows * num_cols + kBiasAddThreads - 1) / kBiasAddThreads);
  if (out.dtype == DType::kF32) {
    bias_add_rows_kernel<<<static_cast<unsigned>(num_blocks), kBiasAddThreads, 0, stream>>>(
        out.ptr<float>(), bias, num_rows, num_cols);
  } else if (out.dtype == DType::kBF16) {
    bias_add_rows_kernel<<<static_cast<unsigned>(num_blocks), kBiasAddThreads, 0, stream>>>(
        out.ptr<__nv_bfloat16>(), bias, num_rows, num_cols);
  } else {
    bias_add_rows_kernel<<<static_cast<unsigned>(num_blocks), kBiasAddThreads, 0, stream>>>(
        out.ptr<__half>(), bias, num_rows, num_cols);
  }
  EMBER_CUDA_CHECK_LAUNCH();
}

}  // namespace

struct Gemm::Impl {
  Owned<cublasLtHandle_t, cublasLtDestroy> handle;
  std::unique_ptr<void, Destroyer<cudaFree>> workspace;
  std::map<PlanKey, Plan> plans;

  Impl() {
    cublasLtHandle_t raw_handle = nullptr;
    EMBER_CUBLAS_CHECK(cublasLtCreate(&raw_handle));
    handle.reset(raw_handle);
    void* raw_workspace = nullptr;
    EMBER_CUDA_CHECK(cudaMalloc(&raw_workspace, kWorkspaceBytes));
    workspace.reset(raw_workspace);
  }

  const Plan& plan_for(const PlanKey& key, const void* bias);
  Plan make_plan(const PlanKey& key, const void* bias);
  std::optional<Plan> try_plan(const PlanKey& key, bool fused_bias, const void* bias);
};

std::optional<Plan> Gemm::Impl::try_plan(const PlanKey& key, bool fused_bias, const void* bias) {
  cublasLtMatmulDesc_t raw_desc = nullptr;
  EMBER_CUBLAS_CHECK(cublasLtMatmulDescCreate(&raw_desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  Plan plan{fused_bias,
            MatmulDesc(raw_desc),
            make_layout(key.in_dtype, key.num_in, key.num_out, key.num_in),
            make_layout(key.in_dtype, key.num_in, key.num_tokens, key.num_in),
            make_layout(key.out_dtype, key.num_out, key.num_tokens, key.num_out),
            {}};
  set_desc(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, int32_t{CUBLAS_OP_T});
  set_desc(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, int32_t{CUBLAS_OP_N});
  if (fused_bias) {
    // NOTE: the epilogue reads the bias in D's dtype (CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE's
    // default); fused plans are only tried for an fp32 D, where that is the bias's dtype.
    set_desc(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, CUBLASLT_EPILOGUE_BIAS);
    // The heuristic reads the pointer's alignment; each call sets its own pointer again.
    set_desc(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
  }

  cublasLtMatmulPreference_t raw_pref = nullptr;
  EMBER_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&raw_pref));
  Preference pref(raw_pref);
  set_preference(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, uint64_t{kWorkspaceBytes});
  // Split-K partial sums stay fp32: the INPLACE and OUTPUT_TYPE schemes would add them up in
  // bf16/fp16, breaking the fp32-accumulation contract (and the CPU reference's tolerance).
  set_preference(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                 uint32_t{CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE});
  set_preference(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_weight);
  set_preference(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_x);
  set_preference(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_out);
  set_preference(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_out);

  cublasLtMatmulHeuristicResult_t result{};
  int num_results = 0;
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
      handle.get(), plan.desc.get(), plan.weight_layout.get(), plan.x_layout.get(),
      plan.out_layout.get(), plan.out_layout.get(), pref.get(), 1, &result, &num_results);
  if (status == CUBLAS_STATUS_NOT_SUPPORTED) return std::nullopt;
  EMBER_CUBLAS_CHECK(status);
  if (num_results == 0) return std::nullopt;
  plan.algo = result.algo;
  return plan;
}

Plan Gemm::Impl::make_plan(const PlanKey& key, const void* bias) {
  if (key.try_fused_bias) {
    if (auto plan = try_plan(key, true, bias)) return std::move(*plan);
    // Without a fused algorithm the bias kernel adds it after the matmul: for an fp32 output
    // the result is the same (one fp32 add either way).
  }
  if (auto plan = try_plan(key, false, nullptr)) return std::move(*plan);
  throw std::runtime_error("Gemm::linear: cuBLASLt has no algorithm for out [" +
                           std::to_string(key.num_tokens) + ", " + std::to_string(key.num_out) +
                           "] " + dtype_name(key.out_dtype) + " = x [" +
                           std::to_string(key.num_tokens) + ", " + std::to_string(key.num_in) +
                           "] @ weight^T, " + dtype_name(key.in_dtype) + ", within " +
                           std::to_string(kWorkspaceBytes >> 20) + " MiB of workspace");
}

const Plan& Gemm::Impl::plan_for(const PlanKey& key, const void* bias) {
  auto it = plans.find(key);
  if (it == plans.end()) it = plans.emplace(key, make_plan(key, bias)).first;
  return it->second;
}

Gemm::Gemm() : impl_(std::make_unique<Impl>()) {}
Gemm::~Gemm() = default;

// NOTE: every call shares the one workspace, so calls on different streams must be ordered
// (the backend issues all of its work on one stream); a Gemm is not thread-safe either.
void Gemm::linear(Tensor out, Tensor x, Tensor weight, const Tensor* bias, cudaStream_t stream) {
  check_linear_args(out, x, weight, bias);
  const int64_t num_tokens = x.size(0);
  if (num_tokens == 0) return;  // cuBLASLt rejects empty matrices; nothing to compute

  // The BIAS epilogue reads the bias in D's dtype: only an fp32 output takes the fp32 bias as is.
  const bool try_fused_bias = bias != nullptr && out.dtype == DType::kF32;
  const void* bias_data = bias != nullptr ? bias->data : nullptr;
  const PlanKey key{num_tokens,
                    weight.size(0),
                    x.size(1),
                    x.dtype,
                    out.dtype,
                    try_fused_bias,
                    alignment_of(weight.data),
                    alignment_of(x.data),
                    alignment_of(out.data),
                    try_fused_bias ? alignment_of(bias_data) : 0};
  const Plan& plan = impl_->plan_for(key, bias_data);
  if (plan.fused_bias) set_desc(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias_data);

  const float alpha = 1.0f, beta = 0.0f;
  EMBER_CUBLAS_CHECK(cublasLtMatmul(
      impl_->handle.get(), plan.desc.get(), &alpha, weight.data, plan.weight_layout.get(), x.data,
      plan.x_layout.get(), &beta, out.data, plan.out_layout.get(), out.data, plan.out_layout.get(),
      &plan.algo, impl_->workspace.get(), kWorkspaceBytes, stream));
  if (bias != nullptr && !plan.fused_bias) launch_bias_add(out, bias->ptr<float>(), stream);
}

}  // namespace engine::cuda
