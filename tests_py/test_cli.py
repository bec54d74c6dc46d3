"""The `ember` command, run as `python -m ember` in a subprocess."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

import ember
from conftest import cpu_engine

try:
    import ember._core  # noqa: F401

    HAS_CORE = True
except ImportError:
    HAS_CORE = False
needs_core = pytest.mark.skipif(not HAS_CORE, reason="ember._core is not built")

TIMEOUT_S = 300


def run_env() -> dict:
    env = dict(os.environ)
    # The subprocess must import the same ember as the tests (an installed or a source tree).
    package_parent = str(pathlib.Path(ember.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    env["HF_HUB_OFFLINE"] = "1"
    # These tests check the CPU path; an empty device list keeps device "auto" off any GPU.
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def run_ember(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "ember", *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        env=run_env(),
        timeout=TIMEOUT_S,
    )


def assert_clean_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_version():
    result = run_ember("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"ember {ember.__version__}"


def test_flag_of_wrong_type_exits_2():
    assert_clean_error(run_ember("generate", "hi", "--max-tokens", "many"), "--max-tokens")


@needs_core
@pytest.mark.parametrize(
    ("flag", "value", "field"),
    [("--temperature", "-1", "temperature"), ("--top-p", "2", "top_p"), ("--n", "0", "n")],
)
def test_bad_sampling_value_exits_2_naming_it(flag, value, field):
    assert_clean_error(run_ember("generate", "hi", flag, value), "ember: error:", field)


@needs_core
def test_unknown_model_exits_2(tmp_path):
    missing = tmp_path / "no-such-model"
    assert_clean_error(run_ember("generate", "hi", "--model", missing), str(missing))


@needs_core
def test_generate_prints_the_greedy_completion(tiny_checkpoint):
    model = tiny_checkpoint("llama")
    result = run_ember("generate", "The river", "--model", model, "--max-tokens", 8)
    assert result.returncode == 0, result.stderr
    expected = cpu_engine(model).generate(
        "The river", ember.SamplingParams(temperature=0.0, max_tokens=8), use_tqdm=False
    )
    assert result.stdout == expected[0].outputs[0].text + "\n"


@needs_core
def test_generate_n_separates_samples(tiny_checkpoint):
    model = tiny_checkpoint("llama")
    args = ["--model", model, "--max-tokens", 4, "--n", 3, "--temperature", 1.0, "--seed", 1]
    result = run_ember("generate", "The river", *args)
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stdout.splitlines() if line.startswith("--- sample")] == [
        f"--- sample {i} ---" for i in range(3)
    ]


@needs_core
def test_chat_two_turns_then_exit(tiny_checkpoint):
    model = tiny_checkpoint("llama")
    result = run_ember(
        "chat", "--model", model, "--max-tokens", 6, stdin="hello\nhow are you\n/exit\nignored\n"
    )
    assert result.returncode == 0, result.stderr
    # The same conversation through the Python API, greedy: the streamed replies must match.
    engine = cpu_engine(model)
    params = ember.SamplingParams(temperature=0.0, max_tokens=6)
    history, expected = [], ""
    for user in ["hello", "how are you"]:
        history.append({"role": "user", "content": user})
        reply = engine.chat(history, params, use_tqdm=False)[0].outputs[0].text
        history.append({"role": "assistant", "content": reply})
        expected += reply + "\n"
    assert result.stdout == expected


def test_bench_latency_and_throughput_on_dummy_weights(tiny_checkpoint, tmp_path):
    model = str(tiny_checkpoint("llama"))
    common = ["--model", model, "--load-format", "dummy", "--input-len", "8", "--output-len", "4"]
    latency_json, throughput_json = tmp_path / "latency.json", tmp_path / "throughput.json"
    latency = run_ember(
        "bench", "latency", *common, "--batch-size", "1", "2", "--num-iters", "1",
        "--json", latency_json,
    )  # fmt: skip
    assert latency.returncode == 0, latency.stderr
    rows = [
        line.split() for line in latency.stdout.splitlines() if line.split()[:1] in (["1"], ["2"])
    ]
    assert [row[0] for row in rows] == ["1", "2"]
    assert all(float(row[1]) > 0 for row in rows)
    report = json.loads(latency_json.read_text())
    assert [r["batch_size"] for r in report["results"]] == [1, 2]
    # Each timed run has 3 decode steps after the first token (4 tokens), whatever the batch.
    assert [r["ember"]["decode_steps"]["num_steps"] for r in report["results"]] == [3, 3]
    assert report["decode_weight_bytes"] > 0

    throughput = run_ember(
        "bench", "throughput", *common, "--num-prompts", "3", "--output-json", throughput_json
    )
    assert throughput.returncode == 0, throughput.stderr
    (ember_row,) = [
        line.split() for line in throughput.stdout.splitlines() if line.split()[:1] == ["ember"]
    ]
    requests_per_s, output_per_s, total_per_s = map(float, ember_row[1:4])
    assert requests_per_s > 0
    # 3 prompts x (8 in + 4 out): total is 3x the output rate
    assert total_per_s == pytest.approx(3 * output_per_s, rel=1e-3)
    report = json.loads(throughput_json.read_text())
    assert report["ember"]["output_tokens_per_s"] == pytest.approx(output_per_s, rel=1e-3)
    # The roofline's model shape, from the checkpoint's config (fp32 K/V on the CPU).
    config = json.loads((tiny_checkpoint("llama") / "config.json").read_text())
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    layers, kv_heads = config["num_hidden_layers"], config["num_key_value_heads"]
    assert report["model_shape"]["kv_cache_bytes_per_token"] == 2 * layers * kv_heads * head_dim * 4
    assert (
        report["model_shape"]["output_head_params"] == config["vocab_size"] * config["hidden_size"]
    )
    assert report["model_shape"]["attention_flops_per_key"] == (
        4 * layers * config["num_attention_heads"] * head_dim
    )

    # Both reports feed the summary table; without engine_bench's it marks the kernels missing.
    summary = subprocess.run(
        [sys.executable, "-m", "ember.bench_summary", "--latency", str(latency_json),
         "--throughput", str(throughput_json)],
        capture_output=True, text=True, env=run_env(), timeout=TIMEOUT_S,
    )  # fmt: skip
    assert summary.returncode == 1, summary.stderr
    assert "| batch-1 decode tok/s" in summary.stdout
    assert "missing (engine_bench)" in summary.stdout


def test_bench_rejects_bad_sizes():
    result = run_ember("bench", "throughput", "--model", "llama-3-8b", "--num-prompts", "0")
    assert_clean_error(result, "--num-prompts must be >= 1, got 0")
