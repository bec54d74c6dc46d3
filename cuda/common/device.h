#pragma once
// Which CUDA devices this process can use. Safe to call on machines without a driver or GPU,
// so the engine can decide between the CPU and CUDA backends at run time.

#include <string>

namespace engine::cuda {

// Number of usable CUDA devices; 0 when there is no driver, no GPU, or the driver is older
// than the runtime (all of which mean "use the CPU", not "fail").
int cuda_device_count();

// The device's marketing name, e.g. "NVIDIA H200". Throws std::out_of_range for an index
// outside [0, cuda_device_count()).
std::string cuda_device_name(int device);

}  // namespace engine::cuda
