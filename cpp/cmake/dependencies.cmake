# Third-party dependencies of libengine: nlohmann_json (config.json) and OpenMP (CPU kernels).
# Nothing is downloaded: each comes from the system or from a Python package already installed.

find_package(Python COMPONENTS Interpreter Development.Module QUIET)

# nlohmann_json: a system/CMake package if there is one, else the headers of the PyPI
# package `nlohmann-json` (a build requirement in pyproject.toml).
find_package(nlohmann_json 3.10 CONFIG QUIET)
if(NOT nlohmann_json_FOUND)
  if(NOT Python_Interpreter_FOUND)
    message(FATAL_ERROR "nlohmann_json not found: install Debian's nlohmann-json3-dev or `pip install nlohmann-json`")
  endif()
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c "import nlohmann_json, os; print(os.path.join(os.path.dirname(nlohmann_json.__file__), 'include'))"
    OUTPUT_VARIABLE EMBER_NLOHMANN_INCLUDE OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _nlohmann_rc)
  if(NOT _nlohmann_rc EQUAL 0 OR NOT EXISTS "${EMBER_NLOHMANN_INCLUDE}/nlohmann/json.hpp")
    message(FATAL_ERROR "nlohmann_json not found: install Debian's nlohmann-json3-dev or `pip install nlohmann-json`")
  endif()
  add_library(ember_nlohmann_json INTERFACE)
  target_include_directories(ember_nlohmann_json SYSTEM INTERFACE "${EMBER_NLOHMANN_INCLUDE}")
  add_library(nlohmann_json::nlohmann_json ALIAS ember_nlohmann_json)
  message(STATUS "ember: nlohmann_json from the Python package at ${EMBER_NLOHMANN_INCLUDE}")
else()
  message(STATUS "ember: nlohmann_json ${nlohmann_json_VERSION} from ${nlohmann_json_DIR}")
endif()

find_package(OpenMP REQUIRED COMPONENTS CXX)
find_package(Threads REQUIRED)
