// ember._core: the pybind11 bindings of libengine's public API (cpp/include/engine/).
// std::invalid_argument surfaces as ValueError, EngineDeadError as ember._core.EngineDeadError (a
// RuntimeError), other std::exceptions as RuntimeError. The GIL is released while the core loads
// a model, steps, or waits for EngineLoop's outputs, so other Python threads keep running.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#ifdef __linux__
#include <pthread.h>
#endif

#include "engine/engine.h"
#include "engine/engine_loop.h"

namespace py = pybind11;
using namespace engine;

namespace {

std::string policy_name(SchedulingPolicy policy) {
  return policy == SchedulingPolicy::kPriority ? "priority" : "fcfs";
}

SchedulingPolicy parse_policy(const std::string& name) {
  if (name == "fcfs") return SchedulingPolicy::kFcfs;
  if (name == "priority") return SchedulingPolicy::kPriority;
  throw std::invalid_argument("scheduling policy must be 'fcfs' or 'priority', got '" + name + "'");
}

py::object finish_reason_of(const CompletionOutput& output) {
  if (!output.finish_reason) return py::none();
  return py::str(to_string(*output.finish_reason));
}

void bind_params(py::module_& m) {
  py::class_<SamplingParams>(m, "SamplingParams")
      .def(py::init<>())
      .def_readwrite("n", &SamplingParams::n)
      .def_readwrite("temperature", &SamplingParams::temperature)
      .def_readwrite("top_p", &SamplingParams::top_p)
      .def_readwrite("top_k", &SamplingParams::top_k)
      .def_readwrite("min_p", &SamplingParams::min_p)
      .def_readwrite("presence_penalty", &SamplingParams::presence_penalty)
      .def_readwrite("frequency_penalty", &SamplingParams::frequency_penalty)
      .def_readwrite("repetition_penalty", &SamplingParams::repetition_penalty)
      .def_readwrite("seed", &SamplingParams::seed)
      .def_readwrite("logit_bias", &SamplingParams::logit_bias)
      .def_readwrite("stop_token_ids", &SamplingParams::stop_token_ids)
      .def_readwrite("ignore_eos", &SamplingParams::ignore_eos)
      .def_readwrite("max_tokens", &SamplingParams::max_tokens)
      .def_readwrite("min_tokens", &SamplingParams::min_tokens)
      .def_readwrite("logprobs", &SamplingParams::logprobs)
      .def_readwrite("prompt_logprobs", &SamplingParams::prompt_logprobs)
      .def_readwrite("priority", &SamplingParams::priority)
      .def("validate", &SamplingParams::validate);

  py::class_<EngineConfig>(m, "EngineConfig")
      .def(py::init<>())
      .def_readwrite("model", &EngineConfig::model)
      .def_readwrite("dtype", &EngineConfig::dtype)
      .def_readwrite("load_format", &EngineConfig::load_format)
      .def_readwrite("device", &EngineConfig::device)
      .def_readwrite("max_model_len", &EngineConfig::max_model_len)
      .def_readwrite("block_size", &EngineConfig::block_size)
      .def_readwrite("max_num_seqs", &EngineConfig::max_num_seqs)
      .def_readwrite("max_num_batched_tokens", &EngineConfig::max_num_batched_tokens)
      .def_readwrite("enable_prefix_caching", &EngineConfig::enable_prefix_caching)
      .def_property(
          "policy", [](const EngineConfig& c) { return policy_name(c.policy); },
          [](EngineConfig& c, const std::string& name) { c.policy = parse_policy(name); })
      .def_readwrite("seed", &EngineConfig::seed)
      .def_readwrite("num_kv_blocks", &EngineConfig::num_kv_blocks)
      .def_readwrite("kv_cache_memory_bytes", &EngineConfig::kv_cache_memory_bytes)
      .def_readwrite("kv_cache_dtype", &EngineConfig::kv_cache_dtype)
      .def_readwrite("num_threads", &EngineConfig::num_threads)
      .def_readwrite("gpu_memory_utilization", &EngineConfig::gpu_memory_utilization)
      .def_readwrite("enforce_eager", &EngineConfig::enforce_eager)
      .def_readwrite("async_scheduling", &EngineConfig::async_scheduling)
      .def("validate", &EngineConfig::validate);
}

void bind_outputs(py::module_& m) {
  py::class_<TokenLogprobs>(m, "TokenLogprobs")
      .def_readonly("token_id", &TokenLogprobs::token_id)
      .def_readonly("logprob", &TokenLogprobs::logprob)
      .def_readonly("rank", &TokenLogprobs::rank)
      .def_readonly("top", &TokenLogprobs::top);
  py::class_<CompletionOutput>(m, "CompletionOutput")
      .def_readonly("index", &CompletionOutput::index)
      .def_readonly("token_ids", &CompletionOutput::token_ids)
      .def_readonly("logprobs", &CompletionOutput::logprobs)
      .def_property_readonly("finish_reason", &finish_reason_of)
      .def_readonly("stop_token_id", &CompletionOutput::stop_token_id);
  py::class_<RequestOutput>(m, "RequestOutput")
      .def_readonly("request_id", &RequestOutput::request_id)
      .def_readonly("prompt_token_ids", &RequestOutput::prompt_token_ids)
      .def_readonly("outputs", &RequestOutput::outputs)
      .def_readonly("finished", &RequestOutput::finished)
      .def_readonly("num_cached_tokens", &RequestOutput::num_cached_tokens)
      .def_readonly("prompt_logprobs", &RequestOutput::prompt_logprobs);
  py::class_<ModelInfo>(m, "ModelInfo")
      .def_readonly("architecture", &ModelInfo::architecture)
      .def_readonly("vocab_size", &ModelInfo::vocab_size)
      .def_readonly("max_model_len", &ModelInfo::max_model_len)
      .def_readonly("eos_token_ids", &ModelInfo::eos_token_ids)
      .def_readonly("device", &ModelInfo::device)
      .def_readonly("num_kv_blocks", &ModelInfo::num_kv_blocks)
      .def_readonly("block_size", &ModelInfo::block_size)
      .def_readonly("cuda_graph_batch_sizes", &ModelInfo::cuda_graph_batch_sizes)
      .def_readonly("kv_cache_dtype", &ModelInfo::kv_cache_dtype)
      .def_readonly("calibrated_kv_cache_scales", &ModelInfo::calibrated_kv_cache_scales);
  py::class_<EngineStats>(m, "EngineStats")
      .def_readonly("num_running", &EngineStats::num_running)
      .def_readonly("num_waiting", &EngineStats::num_waiting)
      .def_readonly("kv_cache_usage", &EngineStats::kv_cache_usage)
      .def_readonly("num_preemptions", &EngineStats::num_preemptions)
      .def_readonly("num_prefix_cache_queries", &EngineStats::num_prefix_cache_queries)
      .def_readonly("num_prefix_cache_hits", &EngineStats::num_prefix_cache_hits)
      .def_readonly("num_steps", &EngineStats::num_steps)
      .def_readonly("step_seconds", &EngineStats::step_seconds)
      .def_readonly("device_wait_seconds", &EngineStats::device_wait_seconds)
      .def_readonly("num_steps_launched_ahead", &EngineStats::num_steps_launched_ahead)
      .def_readonly("num_prompt_tokens", &EngineStats::num_prompt_tokens)
      .def_readonly("num_generation_tokens", &EngineStats::num_generation_tokens);
}

void bind_engine(py::module_& m) {
  using Prompts = std::vector<std::vector<int>>;
  py::class_<Engine>(m, "Engine")
      .def(py::init<const EngineConfig&>(), py::arg("config"),
           py::call_guard<py::gil_scoped_release>())
      .def("add_request", &Engine::add_request, py::arg("request_id"), py::arg("prompt_token_ids"),
           py::arg("params"))
      .def("validate_request", &Engine::validate_request, py::arg("prompt_token_ids"),
           py::arg("params"))
      .def("abort", &Engine::abort, py::arg("request_id"), py::arg("sample_index") = py::none())
      .def("step", &Engine::step, py::call_guard<py::gil_scoped_release>())
      .def("has_unfinished_requests", &Engine::has_unfinished_requests)
      .def(
          "generate",
          [](Engine& engine, const Prompts& prompts, const std::vector<SamplingParams>& params) {
            py::gil_scoped_release release;
            return engine.generate(prompts, params);
          },
          py::arg("prompts"), py::arg("params"))
      .def_property_readonly("model_info", &Engine::model_info)
      .def("stats", &Engine::stats);
}

void bind_engine_loop(py::module_& m) {
  py::register_exception<EngineDeadError>(m, "EngineDeadError", PyExc_RuntimeError);
  using Seconds = std::chrono::duration<double>;
  py::class_<EngineLoop>(m, "EngineLoop")
      .def(py::init<const EngineConfig&>(), py::arg("config"),
           py::call_guard<py::gil_scoped_release>())
      .def("add_request", &EngineLoop::add_request, py::arg("request_id"),
           py::arg("prompt_token_ids"), py::arg("params"))
      .def("validate_request", &EngineLoop::validate_request, py::arg("prompt_token_ids"),
           py::arg("params"))
      .def("abort", &EngineLoop::abort, py::arg("request_id"), py::arg("sample_index") = py::none())
      .def(
          "wait_outputs",
          [](EngineLoop& loop, std::optional<double> timeout) {
            std::optional<Seconds> wait;
            if (timeout) wait = Seconds(*timeout);
            py::gil_scoped_release release;
            return loop.wait_outputs(wait);
          },
          py::arg("timeout") = py::none(),
          "Every queued output (per request, merged); blocks up to `timeout` seconds (None: "
          "until there is one or the loop stops). Raises EngineDeadError once the loop died.")
      .def("is_alive", &EngineLoop::is_alive)
      .def_property_readonly("error", &EngineLoop::error)
      .def("shutdown", &EngineLoop::shutdown, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("model_info", &EngineLoop::model_info)
      .def("stats", &EngineLoop::stats)
      .def("num_unfinished_requests", &EngineLoop::num_unfinished_requests)
      .def("fail_next_step", &EngineLoop::fail_next_step, py::arg("message"));
}

// The calling thread's name as the OS shows it (top -H, py-spy, /proc/PID/task/TID/comm); Linux
// keeps 15 characters. Python threads are otherwise all named after the process.
void name_os_thread(const std::string& name) {
#ifdef __linux__
  pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
#else
  (void)name;
#endif
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "ember's C++ core (libengine)";
  m.attr("__version__") = EMBER_VERSION;
  bind_params(m);
  bind_outputs(m);
  bind_engine(m);
  bind_engine_loop(m);
  m.def("supported_architectures", &engine::supported_architectures);
  m.def("name_os_thread", &name_os_thread, py::arg("name"),
        "Names the calling thread for the OS (the first 15 characters; a no-op off Linux).");
}
