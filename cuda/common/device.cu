#include <stdexcept>
#include <string>

#include "common/cuda_check.h"
#include "common/device.h"

namespace engine::cuda {

int cuda_device_count() {
  int num_devices = 0;
  cudaError_t status = cudaGetDeviceCount(&num_devices);
  if (status != cudaSuccess) {
    // NOTE: the failure is also recorded as this thread's last error; consume it so the next
    // EMBER_CUDA_CHECK_LAUNCH() does not report it against an unrelated kernel.
    cudaGetLastError();
    return 0;
  }
  return num_devices;
}

std::string cuda_device_name(int device) {
  const int num_devices = cuda_device_count();
  if (device < 0 || device >= num_devices) {
    throw std::out_of_range("CUDA device " + std::to_string(device) + " does not exist: " +
                            std::to_string(num_devices) + " device(s) visible");
  }
  cudaDeviceProp props{};
  EMBER_CUDA_CHECK(cudaGetDeviceProperties(&props, device));
  return props.name;
}

}  // namespace engine::cuda
