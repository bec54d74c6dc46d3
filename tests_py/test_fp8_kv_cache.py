"""kv_cache_dtype="fp8" against Hugging Face transformers whose attention reads K and V rounded to
float8 e4m3 by torch's own conversion, as ember's cache stores them: greedy tokens (vLLM's
near-tie rule), logprobs and prompt logprobs for every architecture, on the CPU."""

import pytest
import torch

from conftest import ARCHITECTURES, cpu_engine, cuda_engine
from ember import SamplingParams
from hf_reference import (
    check_logprobs_close,
    check_outputs_close,
    ember_sequences,
    encode,
    greedy_params,
    hf_greedy,
    hf_greedy_one,
    load_hf_tokenizer,
    mixed_prompts,
)
from test_prompt_logprobs import hf_prompt_logprobs

MAX_TOKENS = 12
# Both sides compute in fp32, but a K or V value computed a few fp32 roundings apart can fall on
# the other side of an fp8 rounding boundary, a whole e4m3 step (1/16 of the value) away. Measured
# on the tiny mistral: rounding HF's own K/V after a 1e-6 relative perturbation moves prompt
# logprobs by up to 6.5e-3, as much as ember's differ from HF's.
LOGPROB_ATOL = 2e-2
FP8_ATTENTION = "ember_test_fp8_kv_sdpa"


def fp8_round_trip(x: torch.Tensor) -> torch.Tensor:
    """x rounded to e4m3 and back; clamped first, since ember's conversion saturates at +-448
    (torch's gives NaN past it)."""
    return x.clamp(-448.0, 448.0).to(torch.float8_e4m3fn).to(x.dtype)


@pytest.fixture(scope="module")
def hf_fp8_model():
    """Factory: the transformers model of a checkpoint whose attention reads fp8-rounded K/V."""
    from transformers import AttentionInterface, AttentionMaskInterface, AutoModelForCausalLM
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import sdpa_mask

    def fp8_kv_sdpa(module, query, key, value, attention_mask, **kwargs):
        return sdpa_attention_forward(
            module, query, fp8_round_trip(key), fp8_round_trip(value), attention_mask, **kwargs
        )

    AttentionInterface.register(FP8_ATTENTION, fp8_kv_sdpa)
    # The masks SDPA gets (causal, sliding windows): without one registered under the new name,
    # transformers would build none that knows the window.
    AttentionMaskInterface.register(FP8_ATTENTION, sdpa_mask)
    models = {}

    def load(path, device="cpu", dtype=torch.float32):
        key = (path, device, dtype)
        if key not in models:
            models[key] = (
                AutoModelForCausalLM.from_pretrained(
                    str(path), dtype=dtype, attn_implementation=FP8_ATTENTION
                )
                .to(device)
                .eval()
            )
        return models[key]

    return load


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_greedy_matches_hf_reading_fp8_kv(arch, tiny_checkpoint, hf_fp8_model):
    checkpoint = tiny_checkpoint(arch)
    tokenizer = load_hf_tokenizer(checkpoint)
    prompts = mixed_prompts(tokenizer, len(tokenizer))
    engine = cpu_engine(checkpoint, kv_cache_dtype="fp8")
    assert engine.model_info.kv_cache_dtype == "float8_e4m3fn"
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, logprobs=5, ignore_eos=True)
    outputs = engine.generate(prompts, params, use_tqdm=False)
    ours = ember_sequences(outputs)
    reference = hf_greedy(
        hf_fp8_model(checkpoint), [encode(tokenizer, p) for p in prompts], MAX_TOKENS
    )
    check_outputs_close(ours, reference)
    check_logprobs_close(ours, reference, atol=LOGPROB_ATOL)


def test_prompt_logprobs_match_hf_reading_fp8_kv(tiny_checkpoint, hf_fp8_model, hf_model):
    """Also shows the comparison can fail: the same prompts scored by the unrounded model differ
    from the fp8 reference by many times the tolerance."""
    checkpoint = tiny_checkpoint("llama")
    tokenizer = load_hf_tokenizer(checkpoint)
    prompt = "The quick brown fox jumps over the lazy dog, and then the dog " * 3
    prompt_ids = encode(tokenizer, prompt)
    engine = cpu_engine(checkpoint, kv_cache_dtype="fp8_e4m3", max_num_batched_tokens=32)
    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
    (output,) = engine.generate({"prompt_token_ids": prompt_ids}, params, use_tqdm=False)
    fp8_reference = hf_prompt_logprobs(hf_fp8_model(checkpoint), prompt_ids)
    exact_reference = hf_prompt_logprobs(hf_model(checkpoint), prompt_ids)
    positions = range(1, len(prompt_ids))
    ours = torch.tensor(
        [output.prompt_logprobs[i][prompt_ids[i]].logprob for i in positions], dtype=torch.float64
    )
    fp8 = torch.stack([fp8_reference[i - 1, prompt_ids[i]] for i in positions])
    exact = torch.stack([exact_reference[i - 1, prompt_ids[i]] for i in positions])
    assert (ours - fp8).abs().max().item() <= LOGPROB_ATOL
    assert (exact - fp8).abs().max().item() > 5 * LOGPROB_ATOL


def test_fp8_cache_holds_four_times_the_blocks_of_an_fp32_one(tiny_checkpoint):
    """On the CPU the activations, and an "auto" cache, are fp32: fp8 stores a quarter of the
    bytes, so the same memory holds four times the blocks."""
    checkpoint = tiny_checkpoint("qwen2")
    budget = {"kv_cache_memory_bytes": 1 << 20, "max_num_seqs": 1024}
    auto = cpu_engine(checkpoint, **budget)
    fp8 = cpu_engine(checkpoint, kv_cache_dtype="fp8", **budget)
    assert auto.model_info.kv_cache_dtype == "float32"
    blocks = auto.model_info.num_kv_blocks
    assert 4 * blocks <= fp8.model_info.num_kv_blocks < 4 * (blocks + 1)  # budget // block bytes


def test_unknown_kv_cache_dtype_names_the_allowed_ones(tiny_checkpoint):
    with pytest.raises(ValueError, match="kv_cache_dtype must be one of auto, fp8, fp8_e4m3"):
        cpu_engine(tiny_checkpoint("llama"), kv_cache_dtype="int8")


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen3"])
def test_gpu_fp8_cache_matches_hf_on_gpu_reading_fp8_kv(arch, tiny_checkpoint, hf_fp8_model):
    """The CUDA kernels' fp8 path (cache writes, decode, mma.sync prefill over several chunks)
    against HF in bf16 on the GPU reading fp8-rounded K/V."""
    checkpoint = tiny_checkpoint(arch)
    engine = cuda_engine(checkpoint, kv_cache_dtype="fp8", max_num_batched_tokens=64)
    assert engine.model_info.kv_cache_dtype == "float8_e4m3fn"
    tokenizer = load_hf_tokenizer(checkpoint)
    prompts = mixed_prompts(tokenizer, len(tokenizer))
    outputs = engine.generate(prompts, greedy_params(MAX_TOKENS), use_tqdm=False)
    reference_model = hf_fp8_model(checkpoint, device="cuda", dtype=torch.bfloat16)
    reference = hf_greedy(reference_model, [encode(tokenizer, p) for p in prompts], MAX_TOKENS)
    check_outputs_close(ember_sequences(outputs), reference)


@pytest.mark.slow
def test_smollm2_with_an_fp8_cache_matches_hf_reading_fp8_kv(smollm2_dir, hf_fp8_model):
    """The real default model on an fp8 cache against transformers reading the same fp8-rounded
    K/V (vLLM's near-tie rule). fp8 K/V costs this small model accuracy: both sides answer the
    question below wrongly, and alike."""
    tokenizer = load_hf_tokenizer(smollm2_dir)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(text, add_special_tokens=False).input_ids
    engine = cpu_engine(smollm2_dir, max_model_len=512, max_num_seqs=8, kv_cache_dtype="fp8")
    params = SamplingParams(temperature=0.0, max_tokens=24, logprobs=5, ignore_eos=True)
    outputs = engine.generate({"prompt_token_ids": prompt_ids}, params, use_tqdm=False)
    reference = hf_greedy_one(hf_fp8_model(smollm2_dir), prompt_ids, 24)
    check_outputs_close(ember_sequences(outputs), [reference])
