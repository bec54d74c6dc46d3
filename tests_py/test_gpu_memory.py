"""Out of GPU memory at start is an error that names the setting to change, and it leaves the
memory free for the next try."""

import gc
from pathlib import Path

import pytest

import ember
from conftest import cuda_engine

pytestmark = pytest.mark.gpu
LLAMA_3_8B = Path(ember.__file__).parent / "configs" / "llama-3-8b"


def bf16_weight_bytes(model_dir) -> int:
    """The checkpoint's weights in bf16, counted on transformers' meta device (no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return 2 * sum(p.numel() for p in model.parameters())


def test_gpu_memory_utilization_below_the_weights_names_it():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    # Llama-3-8B's 16 GB of weights against half of that as the whole budget: 0.06 of an
    # H200, 0.1 of an H100.
    weight_bytes = bf16_weight_bytes(LLAMA_3_8B)
    total_bytes = torch.cuda.get_device_properties(0).total_memory
    utilization = round(0.5 * weight_bytes / total_bytes, 3)
    gc.collect()
    free_before, _ = torch.cuda.mem_get_info()
    with pytest.raises((ValueError, RuntimeError), match="gpu_memory_utilization") as error:
        cuda_engine(
            LLAMA_3_8B,
            load_format="dummy",
            skip_tokenizer_init=True,
            gpu_memory_utilization=utilization,
        )
    assert "must be in" not in str(error.value), f"{utilization} was rejected as invalid"
    del error
    gc.collect()
    free_after, _ = torch.cuda.mem_get_info()
    assert free_after > free_before - weight_bytes / 4, (
        f"the failed start left {(free_before - free_after) / 1e9:.1f} GB of GPU memory in use"
    )
