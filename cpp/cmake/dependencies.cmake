# Third-party dependencies of libengine: nlohmann_json (config.json) and OpenMP (CPU kernels).
# Nothing is downloaded: each comes from the system or from a Python package already installed.

find_package(Python COMPONENTS Interpreter Development.Module QUIET)

# nlohmann_json (header-only), first found of: EMBER_NLOHMANN_INCLUDE (a folder holding
# nlohmann/json.hpp, for machines without a registry), a CMake package (Debian's
# nlohmann-json3-dev), the headers of the PyPI package `nlohmann-json` (a build requirement in
# pyproject.toml).
set(EMBER_NLOHMANN_INCLUDE "" CACHE PATH "A folder holding nlohmann/json.hpp")
set(_nlohmann_hint "install Debian's nlohmann-json3-dev, `pip install nlohmann-json`, or pass -DEMBER_NLOHMANN_INCLUDE=<dir>")
if(NOT EMBER_NLOHMANN_INCLUDE)
  find_package(nlohmann_json 3.10 CONFIG QUIET)
endif()
if(NOT EMBER_NLOHMANN_INCLUDE AND NOT nlohmann_json_FOUND AND Python_Interpreter_FOUND)
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c "import nlohmann_json, os; print(os.path.join(os.path.dirname(nlohmann_json.__file__), 'include'))"
    OUTPUT_VARIABLE _nlohmann_pkg OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  set(EMBER_NLOHMANN_INCLUDE "${_nlohmann_pkg}")
endif()
if(nlohmann_json_FOUND)
  message(STATUS "ember: nlohmann_json ${nlohmann_json_VERSION} from ${nlohmann_json_DIR}")
elseif(EMBER_NLOHMANN_INCLUDE AND EXISTS "${EMBER_NLOHMANN_INCLUDE}/nlohmann/json.hpp")
  add_library(ember_nlohmann_json INTERFACE)
  target_include_directories(ember_nlohmann_json SYSTEM INTERFACE "${EMBER_NLOHMANN_INCLUDE}")
  add_library(nlohmann_json::nlohmann_json ALIAS ember_nlohmann_json)
  message(STATUS "ember: nlohmann_json headers from ${EMBER_NLOHMANN_INCLUDE}")
else()
  message(FATAL_ERROR "nlohmann_json not found: ${_nlohmann_hint}")
endif()

find_package(OpenMP REQUIRED COMPONENTS CXX)
find_package(Threads REQUIRED)
