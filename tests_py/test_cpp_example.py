"""The C++ example (cpp/examples/generate) builds against the installed package with CMake's
find_package(engine) and generates the same greedy tokens as the Python engine."""

import os
import pathlib
import shutil
import subprocess

import pytest

import ember
from conftest import cpu_engine
from ember import SamplingParams

EXAMPLE_DIR = pathlib.Path(__file__).resolve().parents[1] / "cpp" / "examples" / "generate"
PROMPT_IDS = [5, 17, 42, 99, 123]
MAX_TOKENS = 8


def run_checked(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, (
        f"{' '.join(map(str, command))} failed ({result.returncode}):\n"
        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout


def find_executable(build_dir):
    candidates = [
        p
        for p in build_dir.rglob("*generate*")
        if p.is_file() and p.stat().st_mode & 0o111 and "CMakeFiles" not in p.parts
    ]
    assert candidates, f"no generate executable under {build_dir}"
    return candidates[0]


@pytest.fixture(scope="module")
def example_binary(tmp_path_factory):
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed: cannot build cpp/examples/generate")
    build_dir = tmp_path_factory.mktemp("generate_build")
    run_checked(
        [
            "cmake",
            "-S",
            str(EXAMPLE_DIR),
            "-B",
            str(build_dir),
            f"-DCMAKE_PREFIX_PATH={ember.cmake_prefix_path()}",
            "-DCMAKE_BUILD_TYPE=Release",
        ],
        timeout=300,
    )
    run_checked(["cmake", "--build", str(build_dir), "-j", "2"], timeout=600)
    return find_executable(build_dir)


def test_cpp_example_matches_python_engine(example_binary, tiny_checkpoint):
    checkpoint = tiny_checkpoint("llama")
    stdout = run_checked(
        [
            str(example_binary),
            str(checkpoint),
            "--max-tokens",
            str(MAX_TOKENS),
            *map(str, PROMPT_IDS),
        ],
        timeout=120,
        # The example runs device "auto": with no GPU visible that is the CPU, as in Python.
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines, "the example printed nothing"
    cpp_tokens = [int(t) for t in lines[-1].split()]

    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
    (output,) = cpu_engine(checkpoint).generate(
        {"prompt_token_ids": PROMPT_IDS}, params, use_tqdm=False
    )
    assert cpp_tokens == list(output.outputs[0].token_ids)
    assert 0 < len(cpp_tokens) <= MAX_TOKENS
