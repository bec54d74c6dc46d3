"""The engine on the GPU (CUDA backend, bf16) against Hugging Face transformers on the GPU in
bf16 on the same weights, for every supported architecture: greedy tokens equal under vLLM's
rule (at the first difference each side's token is in the other's top-5). Skipped without a
GPU or a CUDA build of ember."""

import pytest

from conftest import ARCHITECTURES, cuda_engine
from hf_reference import (
    check_greedy_on_mixed_prompts,
    encode,
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
    # The reference in the precision ember computes in on the GPU, as vLLM's model tests do.
    reference_model = hf_model(checkpoint, device="cuda", dtype=torch.bfloat16)
    check_greedy_on_mixed_prompts(
        engine, reference_model, load_hf_tokenizer(checkpoint), MAX_TOKENS
    )


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_prompt_logprobs_on_gpu_match_hf(arch, tiny_checkpoint, hf_model):
    """Prompt logprobs from the GPU's logits rows (after the step's sampled rows) against HF's
    log_softmax in float32 on the same weights. bf16 activations on the GPU: 0.05 absolute."""
    torch = pytest.importorskip("torch")
    from ember import SamplingParams

    checkpoint = tiny_checkpoint(arch)
    engine = cuda_engine(checkpoint, max_num_batched_tokens=32)  # scored over several chunks
    tokenizer = load_hf_tokenizer(checkpoint)
    prompt_ids = encode(tokenizer, mixed_prompts(tokenizer, len(tokenizer))[-1])
    params = SamplingParams(temperature=0.0, max_tokens=2, prompt_logprobs=3)
    (output,) = engine.generate({"prompt_token_ids": prompt_ids}, params, use_tqdm=False)
    model = hf_model(checkpoint)  # float32 on the CPU
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids])).logits[0, :-1].double()
    reference = torch.log_softmax(logits, dim=-1)
    assert output.prompt_logprobs[0] is None
    assert len(output.prompt_logprobs) == len(prompt_ids)
    for position in range(1, len(prompt_ids)):
        token = prompt_ids[position]
        scored = output.prompt_logprobs[position][token]
        assert scored.logprob == pytest.approx(reference[position - 1, token].item(), abs=0.05)
