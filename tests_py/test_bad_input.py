"""Bad input is a ValueError naming what is wrong, never a crash; a bad request fails its whole
generate() call before anything runs, and the engine keeps serving."""

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap

import pytest

from conftest import cpu_engine
from ember import SamplingParams

MAX_MODEL_LEN = 64


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint("llama")


@pytest.fixture(scope="module")
def engine(checkpoint):
    return cpu_engine(checkpoint, max_model_len=MAX_MODEL_LEN)


def greedy(**kwargs):
    return SamplingParams(temperature=0.0, **kwargs)


# ----- sampling parameters --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.5),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -2),
        ("min_p", -0.1),
        ("min_p", 1.5),
        ("max_tokens", 0),
        ("n", 0),
        ("logprobs", 21),
        ("logprobs", -1),
    ],
)
def test_bad_sampling_param_names_field(engine, field, value):
    # Whether SamplingParams or generate() rejects it, the error must name the field.
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        engine.generate("Hello", SamplingParams(**{field: value}), use_tqdm=False)


# ----- prompts --------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["", {"prompt_token_ids": []}], ids=["string", "token_ids"])
def test_empty_prompt(engine, prompt):
    with pytest.raises(ValueError, match="empty"):
        engine.generate(prompt, greedy(), use_tqdm=False)


def test_prompt_longer_than_max_model_len_gives_both_numbers(engine):
    with pytest.raises(ValueError, match=rf"100\b.*\b{MAX_MODEL_LEN}\b"):
        engine.generate({"prompt_token_ids": [5] * 100}, greedy(), use_tqdm=False)


def test_prompt_plus_max_tokens_beyond_max_model_len_stops_at_it(engine):
    (output,) = engine.generate(
        {"prompt_token_ids": [5] * 60}, greedy(max_tokens=20, ignore_eos=True), use_tqdm=False
    )
    assert len(output.outputs[0].token_ids) == MAX_MODEL_LEN - 60
    assert output.outputs[0].finish_reason == "length"


@pytest.mark.parametrize("bad_id", [400, 10**6, -1], ids=["vocab_size", "huge", "negative"])
def test_token_id_outside_vocabulary(engine, bad_id):
    with pytest.raises(ValueError, match=rf"{bad_id}\b"):
        engine.generate({"prompt_token_ids": [5, bad_id, 6]}, greedy(), use_tqdm=False)


def test_one_bad_request_fails_the_whole_call_before_running(engine):
    good = ["Hello", {"prompt_token_ids": [7, 8, 9]}]
    want = [list(o.outputs[0].token_ids) for o in engine.generate(good, greedy(), False)]
    before = engine.stats()

    with pytest.raises(ValueError, match=r"\b2\b"):
        engine.generate([*good, {"prompt_token_ids": [5, 10**6]}], greedy(), use_tqdm=False)

    after = engine.stats()
    assert (after.num_running, after.num_waiting) == (0, 0)
    assert after.num_prefix_cache_queries == before.num_prefix_cache_queries
    got = [list(o.outputs[0].token_ids) for o in engine.generate(good, greedy(), False)]
    assert got == want


# ----- engine arguments and checkpoints -------------------------------------------------------


@pytest.mark.parametrize(
    ("argument", "value"), [("block_size", 0), ("max_num_seqs", 0), ("dtype", "float7")]
)
def test_bad_engine_argument_names_it(checkpoint, argument, value):
    with pytest.raises(ValueError, match=argument):
        cpu_engine(checkpoint, **{argument: value})


def test_missing_model_path(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(ValueError, match="no_such_model"):
        cpu_engine(missing)


def copy_checkpoint(checkpoint, tmp_path):
    directory = tmp_path / "copy"
    shutil.copytree(checkpoint, directory)
    return directory


def edit_config(directory, edit):
    path = directory / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def test_unknown_architecture(checkpoint, tmp_path):
    directory = copy_checkpoint(checkpoint, tmp_path)
    edit_config(directory, lambda c: c.update(architectures=["FooBarForCausalLM"]))
    with pytest.raises(ValueError, match="FooBarForCausalLM"):
        cpu_engine(directory)


def test_config_missing_hidden_size(checkpoint, tmp_path):
    directory = copy_checkpoint(checkpoint, tmp_path)
    edit_config(directory, lambda c: c.pop("hidden_size"))
    with pytest.raises(ValueError, match="hidden_size"):
        cpu_engine(directory)


# A broken weights file is loaded in a child process: a segfault there fails this test
# instead of killing pytest.
LOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from ember import Engine
    try:
        Engine(sys.argv[1], device="cpu")
    except Exception as error:
        print(json.dumps({"type": type(error).__name__, "message": str(error)}))
    else:
        print(json.dumps({"type": None, "message": ""}))
    """
)


def load_in_subprocess(directory):
    result = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, (
        f"loading {directory} crashed (exit code {result.returncode}):\n{result.stderr[-2000:]}"
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def truncate_half(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def huge_header_length(path):
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 2**62) + data[8:])


def garbled_header(path):
    data = bytearray(path.read_bytes())
    (header_length,) = struct.unpack("<Q", data[:8])
    data[8 : 8 + header_length] = b"{" + b"#" * (header_length - 1)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("corrupt", [truncate_half, huge_header_length, garbled_header])
def test_corrupt_safetensors_is_an_error_not_a_crash(checkpoint, tmp_path, corrupt):
    directory = copy_checkpoint(checkpoint, tmp_path)
    corrupt(directory / "model.safetensors")
    error = load_in_subprocess(directory)
    assert error["type"] in ("ValueError", "RuntimeError", "OSError"), error
    assert "safetensors" in error["message"], error
