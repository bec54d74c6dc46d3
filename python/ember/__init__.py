"""ember: an LLM inference engine. `from ember import LLM, SamplingParams` as with vLLM.

The heavy classes load on first use, so `import ember` (and `ember --version`) stays fast and
works before the compiled core is needed.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    __version__ = version("ember")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

_LAZY_EXPORTS = {
    "Engine": "ember.engine",
    "LLM": "ember.engine",
    "AsyncEngine": "ember.async_engine",
    "EngineDeadError": "ember.async_engine",
    "SamplingParams": "ember.sampling_params",
    "RequestOutput": "ember.outputs",
    "CompletionOutput": "ember.outputs",
    "Logprob": "ember.outputs",
    "RequestMetrics": "ember.outputs",
    "resolve_model": "ember.model_resolver",
}

__all__ = ["__version__", "cmake_prefix_path", *_LAZY_EXPORTS]


def cmake_prefix_path() -> str:
    """The folder to add to CMAKE_PREFIX_PATH for `find_package(engine)`: the wheel installs
    libengine, its headers and lib/cmake/engine beside the compiled module `ember._core` (in an
    editable install that is not the source folder of this file)."""
    from importlib.util import find_spec

    spec = find_spec("ember._core")
    if spec is None or spec.origin is None:
        raise RuntimeError("ember's compiled core is not installed; pip install ember first")
    return str(Path(spec.origin).resolve().parent)


def __getattr__(name: str):
    module = _LAZY_EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ember' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
