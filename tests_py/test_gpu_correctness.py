"""The engine on the GPU (CUDA backend, bf16) against Hugging Face transformers on the GPU in
bf16 on the same weights, for every supported architecture: greedy tokens equal under vLLM's
rule (at the first difference each side's token is in the other's top-5). Skipped without a
GPU or a CUDA build of ember."""

import pytest

from conftest import ARCHITECTURES, cuda_engine
from hf_reference import (
    check_outputs_close,
    ember_sequences,
    encode,
    greedy_params,
    hf_greedy,
    load_hf_tokenizer,
    mixed_prompts,
)

pytestmark = pytest.mark.gpu
MAX_TOKENS = 16


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_greedy_on_gpu_matches_hf_on_gpu(arch, tiny_checkpoint, hf_model):
    torch = pytest.importorskip("torch")
    checkpoint = tiny_checkpoint(arch)
    engine = cuda_engine(checkpoint)
    assert engine.model_info.device.startswith("cuda")
    tokenizer = load_hf_tokenizer(checkpoint)
    prompts = mixed_prompts(tokenizer, len(tokenizer))
    outputs = engine.generate(prompts, greedy_params(MAX_TOKENS), use_tqdm=False)
    # The reference in the precision ember computes in on the GPU, as vLLM's model tests do.
    reference_model = hf_model(checkpoint, device="cuda", dtype=torch.bfloat16)
    reference = hf_greedy(reference_model, [encode(tokenizer, p) for p in prompts], MAX_TOKENS)
    check_outputs_close(ember_sequences(outputs), reference)
