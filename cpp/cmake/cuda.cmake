# The CUDA switch. EMBER_CUDA=AUTO builds the CUDA backend where nvcc and cuBLAS are found;
# ON makes their absence an error; OFF skips it. Sets EMBER_CUDA_ENABLED and EMBER_CUTLASS_INCLUDE.

# A toolkit without cuBLAS (a runtime-only install, as on the CPU machines) can take it from
# elsewhere, e.g. the PyPI wheel nvidia-cublas: -DEMBER_CUBLAS_ROOT=<site-packages>/nvidia/cu13.
set(EMBER_CUBLAS_ROOT "" CACHE PATH "Folder with include/cublas_v2.h and lib/libcublas.so*, for a CUDA toolkit without cuBLAS")

# Defines CUDA::cublas and CUDA::cublasLt from `root`. The wheel ships only the versioned
# sonames (libcublas.so.13), so those are searched as well as the plain names.
function(ember_import_cublas root)
  find_path(EMBER_CUBLAS_INCLUDE_DIR cublas_v2.h PATHS "${root}/include" NO_DEFAULT_PATH)
  foreach(lib cublas cublasLt)
    find_library(EMBER_${lib}_LIBRARY NAMES ${lib} lib${lib}.so.${CUDAToolkit_VERSION_MAJOR}
                 PATHS "${root}/lib" "${root}/lib64" NO_DEFAULT_PATH)
  endforeach()
  if(NOT EMBER_CUBLAS_INCLUDE_DIR OR NOT EMBER_cublas_LIBRARY OR NOT EMBER_cublasLt_LIBRARY)
    message(WARNING "EMBER_CUBLAS_ROOT=${root} has no include/cublas_v2.h and lib/libcublas{,Lt}.so*")
    return()
  endif()
  add_library(CUDA::cublasLt SHARED IMPORTED GLOBAL)
  set_target_properties(CUDA::cublasLt PROPERTIES
    IMPORTED_LOCATION "${EMBER_cublasLt_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${EMBER_CUBLAS_INCLUDE_DIR}"
    INTERFACE_LINK_LIBRARIES CUDA::cudart)
  add_library(CUDA::cublas SHARED IMPORTED GLOBAL)
  set_target_properties(CUDA::cublas PROPERTIES
    IMPORTED_LOCATION "${EMBER_cublas_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${EMBER_CUBLAS_INCLUDE_DIR}"
    INTERFACE_LINK_LIBRARIES "CUDA::cublasLt;CUDA::cudart")
  message(STATUS "ember: cuBLAS from EMBER_CUBLAS_ROOT=${root}")
endfunction()

set(EMBER_CUTLASS_DIR "" CACHE PATH "A CUTLASS v4.2.0 tree (include/, tools/util/include/); overrides the submodule and the nvidia-cutlass package")

set(EMBER_CUDA_ENABLED OFF)
if(NOT EMBER_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  find_package(CUDAToolkit QUIET)
  if(CUDAToolkit_FOUND AND NOT TARGET CUDA::cublas AND EMBER_CUBLAS_ROOT)
    ember_import_cublas("${EMBER_CUBLAS_ROOT}")
  endif()
  if(CMAKE_CUDA_COMPILER AND TARGET CUDA::cublas AND TARGET CUDA::cublasLt)
    set(EMBER_CUDA_ENABLED ON)
  elseif(EMBER_CUDA STREQUAL "ON")
    message(FATAL_ERROR "EMBER_CUDA=ON but nvcc (${CMAKE_CUDA_COMPILER}) or cuBLAS/cuBLASLt was not found")
  else()
    message(STATUS "ember: CUDA backend off (nvcc or cuBLAS not found; EMBER_CUDA=AUTO)")
  endif()
endif()

if(EMBER_CUDA_ENABLED)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    # Hopper first: wgmma/TMA kernels need the arch-specific sm_90a target.
    set(CMAKE_CUDA_ARCHITECTURES 90a)
  endif()
  enable_language(CUDA)
  # CMake before 3.26 knows no C++20 flag for nvcc (the CPU machines have 3.25); nvcc >= 12
  # takes -std=c++20.
  if(NOT CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
    set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
    set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
  endif()
  set(CMAKE_CUDA_STANDARD 20)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  message(STATUS "ember: CUDA backend on (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, archs ${CMAKE_CUDA_ARCHITECTURES})")

  # CUTLASS headers: EMBER_CUTLASS_DIR when given (a machine with neither the submodule nor a
  # package registry), else the third_party/cutlass submodule where it is checked out, else the
  # identical v4.2.0 headers shipped in the PyPI package nvidia-cutlass==4.2.0.0.
  set(_cutlass_submodule "${PROJECT_SOURCE_DIR}/third_party/cutlass")
  if(EMBER_CUTLASS_DIR)
    if(NOT EXISTS "${EMBER_CUTLASS_DIR}/include/cutlass/cutlass.h")
      message(FATAL_ERROR "EMBER_CUTLASS_DIR=${EMBER_CUTLASS_DIR} has no include/cutlass/cutlass.h")
    endif()
    set(EMBER_CUTLASS_INCLUDE "${EMBER_CUTLASS_DIR}/include" "${EMBER_CUTLASS_DIR}/tools/util/include")
    message(STATUS "ember: CUTLASS headers from EMBER_CUTLASS_DIR=${EMBER_CUTLASS_DIR}")
  elseif(EXISTS "${_cutlass_submodule}/include/cutlass/cutlass.h")
    set(EMBER_CUTLASS_INCLUDE "${_cutlass_submodule}/include" "${_cutlass_submodule}/tools/util/include")
    message(STATUS "ember: CUTLASS headers from the submodule ${_cutlass_submodule}")
  else()
    if(Python_Interpreter_FOUND)
      execute_process(
        COMMAND "${Python_EXECUTABLE}" -c "import cutlass_library, os; print(os.path.join(os.path.dirname(cutlass_library.__file__), 'source'))"
        OUTPUT_VARIABLE _cutlass_pkg OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    endif()
    if(_cutlass_pkg AND EXISTS "${_cutlass_pkg}/include/cutlass/cutlass.h")
      set(EMBER_CUTLASS_INCLUDE "${_cutlass_pkg}/include" "${_cutlass_pkg}/tools/util/include")
      message(STATUS "ember: CUTLASS headers from the Python package nvidia-cutlass at ${_cutlass_pkg}")
    else()
      # NOTE: no kernel includes CUTLASS yet, so under AUTO a GPU machine without the headers
      # (a plain `pip install .`) still builds the CUDA backend; ON insists on them.
      string(CONCAT _cutlass_hint "check out third_party/cutlass (git submodule update --init), "
                    "`pip install --no-deps nvidia-cutlass==4.2.0.0` or pass "
                    "-DEMBER_CUTLASS_DIR=<a CUTLASS v4.2.0 tree>")
      if(EMBER_CUDA STREQUAL "ON")
        message(FATAL_ERROR "CUTLASS headers not found: ${_cutlass_hint}")
      endif()
      set(EMBER_CUTLASS_INCLUDE "")
      message(WARNING "ember: CUTLASS headers not found (no kernel needs them yet): ${_cutlass_hint}")
    endif()
  endif()
endif()
