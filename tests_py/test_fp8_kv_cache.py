"""kv_cache_dtype="fp8" against Hugging Face transformers whose attention reads K and V rounded to
float8 e4m3 by torch's own conversion, as ember's cache stores them: greedy tokens (vLLM's
near-tie rule), logprobs and prompt logprobs for every architecture, on the CPU."""

import pathlib
import shutil

import pytest
import torch

from conftest import ARCHITECTURES, cpu_engine, cuda_engine
from ember import SamplingParams
from hf_reference import (
    check_greedy_on_mixed_prompts,
    check_logprobs_close,
    check_outputs_close,
    ember_sequences,
    encode,
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


def fp8_round_trip(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """x as an fp8 cache with this scale holds it: x times the fp32 reciprocal of the scale,
    rounded to e4m3 (clamped first, since ember's conversion saturates at +-448 where torch's
    gives NaN), read back times the scale."""
    inverse = 1.0 / torch.tensor(scale, dtype=torch.float32)
    stored = (x.float() * inverse).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    return (stored.float() * scale).to(x.dtype)


def checkpoint_kv_cache_scales(path) -> dict[int, tuple[float, float]]:
    """Layer index -> (k_scale, v_scale) of the self_attn.k_scale/v_scale tensors in path."""
    from safetensors import safe_open

    scales = {}
    with safe_open(str(pathlib.Path(path) / "model.safetensors"), "pt") as weights:
        for name in weights.keys():  # noqa: SIM118 (a safe_open handle is not iterable)
            if name.endswith(".self_attn.k_scale"):
                layer = int(name.split(".")[2])
                v_name = name.replace(".k_scale", ".v_scale")
                scales[layer] = (
                    weights.get_tensor(name).item(),
                    weights.get_tensor(v_name).item(),
                )
    return scales


@pytest.fixture(scope="module")
def hf_fp8_model():
    """Factory: the transformers model of a checkpoint whose attention reads fp8-rounded K/V."""
    from transformers import AttentionInterface, AttentionMaskInterface, AutoModelForCausalLM
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import sdpa_mask

    def fp8_kv_sdpa(module, query, key, value, attention_mask, **kwargs):
        k_scale, v_scale = getattr(module, "ember_kv_cache_scales", (1.0, 1.0))
        key, value = fp8_round_trip(key, k_scale), fp8_round_trip(value, v_scale)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(FP8_ATTENTION, fp8_kv_sdpa)
    # The masks SDPA gets (causal, sliding windows): without one registered under the new name,
    # transformers would build none that knows the window.
    AttentionMaskInterface.register(FP8_ATTENTION, sdpa_mask)
    models = {}

    def load(path, device="cpu", dtype=torch.float32):
        """Reads K/V through the checkpoint's calibrated scales where it has them."""
        key = (path, device, dtype)
        if key not in models:
            model = AutoModelForCausalLM.from_pretrained(
                str(path), dtype=dtype, attn_implementation=FP8_ATTENTION
            )
            for layer, scales in checkpoint_kv_cache_scales(path).items():
                model.model.layers[layer].self_attn.ember_kv_cache_scales = scales
            models[key] = model.to(device).eval()
        return models[key]

    return load


def check_greedy_matches(engine, reference_model, prompts, prompts_ids):
    """Greedy tokens (vLLM's near-tie rule) and their logprobs against the reference model."""
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, logprobs=5, ignore_eos=True)
    ours = ember_sequences(engine.generate(prompts, params, use_tqdm=False))
    reference = hf_greedy(reference_model, prompts_ids, MAX_TOKENS)
    check_outputs_close(ours, reference)
    check_logprobs_close(ours, reference, atol=LOGPROB_ATOL)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_greedy_matches_hf_reading_fp8_kv(arch, tiny_checkpoint, hf_fp8_model):
    checkpoint = tiny_checkpoint(arch)
    tokenizer = load_hf_tokenizer(checkpoint)
    prompts = mixed_prompts(tokenizer, len(tokenizer))
    engine = cpu_engine(checkpoint, kv_cache_dtype="fp8")
    assert engine.model_info.kv_cache_dtype == "float8_e4m3fn"
    prompts_ids = [encode(tokenizer, p) for p in prompts]
    check_greedy_matches(engine, hf_fp8_model(checkpoint), prompts, prompts_ids)


def ember_prompt_token_logprobs(output, prompt_ids) -> torch.Tensor:
    """The logprob ember reports for each prompt token after the first, in float64."""
    positions = range(1, len(prompt_ids))
    return torch.tensor(
        [output.prompt_logprobs[i][prompt_ids[i]].logprob for i in positions], dtype=torch.float64
    )


def reference_prompt_token_logprobs(reference, prompt_ids) -> torch.Tensor:
    """The same from hf_prompt_logprobs' rows (row i scores token i + 1)."""
    return torch.stack([reference[i - 1, prompt_ids[i]] for i in range(1, len(prompt_ids))])


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
    ours = ember_prompt_token_logprobs(output, prompt_ids)
    fp8 = reference_prompt_token_logprobs(fp8_reference, prompt_ids)
    exact = reference_prompt_token_logprobs(exact_reference, prompt_ids)
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
    reference_model = hf_fp8_model(checkpoint, device="cuda", dtype=torch.bfloat16)
    check_greedy_on_mixed_prompts(
        engine, reference_model, load_hf_tokenizer(checkpoint), MAX_TOKENS
    )


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


# ----- calibrated K/V scales from the checkpoint ---------------------------------------------

RECORD_ATTENTION = "ember_test_record_kv_amax"
FP8_MAX = 448.0


@pytest.fixture(scope="module")
def calibrate_kv_amax():
    """Factory: per layer, the largest |K| (after RoPE) and |V| that HF computes over the prompts,
    as a calibration pass (llm-compressor's) records them."""
    from transformers import AttentionInterface, AttentionMaskInterface, AutoModelForCausalLM
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import sdpa_mask

    amax: dict[int, tuple[float, float]] = {}

    def record_kv_amax(module, query, key, value, attention_mask, **kwargs):
        k, v = amax.get(module.layer_idx, (0.0, 0.0))
        amax[module.layer_idx] = (max(k, key.abs().max().item()), max(v, value.abs().max().item()))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(RECORD_ATTENTION, record_kv_amax)
    AttentionMaskInterface.register(RECORD_ATTENTION, sdpa_mask)

    def calibrate(path, prompts_ids):
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=torch.float32, attn_implementation=RECORD_ATTENTION
        ).eval()
        amax.clear()
        with torch.no_grad():
            for ids in prompts_ids:
                model(input_ids=torch.tensor([ids]))
        return dict(amax)

    return calibrate


def write_scaled_checkpoint(source, target, scales=None, weight_factors=None):
    """A copy of `source` with, per layer, self_attn.k_scale and v_scale (shape [], float32)
    from `scales` (layer -> (k, v)), and the weights named in `weight_factors` multiplied."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    path = pathlib.Path(target) / "model.safetensors"
    tensors = load_file(str(path))
    for name, factor in (weight_factors or {}).items():
        tensors[name] = tensors[name] * factor
    for layer, (k_scale, v_scale) in (scales or {}).items():
        prefix = f"model.layers.{layer}.self_attn."
        tensors[prefix + "k_scale"] = torch.tensor(k_scale, dtype=torch.float32)
        tensors[prefix + "v_scale"] = torch.tensor(v_scale, dtype=torch.float32)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return pathlib.Path(target)


def scales_from_amax(amax) -> dict[int, tuple[float, float]]:
    """fp8's whole range for each layer's calibrated amax."""
    return {layer: (k / FP8_MAX, v / FP8_MAX) for layer, (k, v) in amax.items()}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_calibrated_scales_match_hf_reading_the_same_fp8_kv(
    arch, tiny_checkpoint, tmp_path, calibrate_kv_amax, hf_fp8_model
):
    source = tiny_checkpoint(arch)
    tokenizer = load_hf_tokenizer(source)
    prompts = mixed_prompts(tokenizer, len(tokenizer))
    prompts_ids = [encode(tokenizer, p) for p in prompts]
    scales = scales_from_amax(calibrate_kv_amax(source, prompts_ids))
    checkpoint = write_scaled_checkpoint(source, tmp_path / arch, scales)
    engine = cpu_engine(checkpoint, kv_cache_dtype="fp8")
    assert engine.model_info.calibrated_kv_cache_scales
    check_greedy_matches(engine, hf_fp8_model(checkpoint), prompts, prompts_ids)


def prompt_logprob_errors(output, reference, prompt_ids) -> torch.Tensor:
    """|ember - reference| of each prompt token's logprob."""
    ours = ember_prompt_token_logprobs(output, prompt_ids)
    return (ours - reference_prompt_token_logprobs(reference, prompt_ids)).abs()


def test_calibrated_scales_keep_kv_beyond_the_fp8_range(
    tiny_checkpoint, tmp_path, calibrate_kv_amax, hf_fp8_model, hf_model
):
    """The same function with K and V 256 times larger (k_proj and v_proj times 256, q_proj and
    o_proj divided by it), as models with K/V outliers have them: past fp8's +-448 at scale 1,
    so an uncalibrated cache saturates; the calibrated scales keep ember within the fp8
    tolerance of the exact model, and equal to HF reading the same scaled fp8."""
    source = tiny_checkpoint("llama")
    tokenizer = load_hf_tokenizer(source)
    prompt_ids = encode(tokenizer, "The quick brown fox jumps over the lazy dog, and then " * 3)
    factors = {}
    for layer in range(2):
        prefix = f"model.layers.{layer}.self_attn."
        factors |= {prefix + "k_proj.weight": 256.0, prefix + "q_proj.weight": 1 / 256.0}
        factors |= {prefix + "v_proj.weight": 256.0, prefix + "o_proj.weight": 1 / 256.0}
    uncalibrated = write_scaled_checkpoint(source, tmp_path / "big", weight_factors=factors)
    amax = calibrate_kv_amax(uncalibrated, [prompt_ids])
    assert min(min(k, v) for k, v in amax.values()) > FP8_MAX
    calibrated = write_scaled_checkpoint(
        source, tmp_path / "calibrated", scales_from_amax(amax), weight_factors=factors
    )

    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
    request = {"prompt_token_ids": prompt_ids}
    exact = hf_prompt_logprobs(hf_model(source), prompt_ids)
    errors = {}
    for name, checkpoint in [("calibrated", calibrated), ("uncalibrated", uncalibrated)]:
        engine = cpu_engine(checkpoint, kv_cache_dtype="fp8", max_num_batched_tokens=32)
        assert engine.model_info.calibrated_kv_cache_scales == (name == "calibrated")
        (output,) = engine.generate(request, params, use_tqdm=False)
        errors[name] = prompt_logprob_errors(output, exact, prompt_ids).max().item()
        if name == "calibrated":
            fp8_reference = hf_prompt_logprobs(hf_fp8_model(checkpoint), prompt_ids)
            assert prompt_logprob_errors(output, fp8_reference, prompt_ids).max() <= LOGPROB_ATOL
    print(f"max prompt-logprob error against the exact model: {errors}")
    assert errors["uncalibrated"] > 5 * errors["calibrated"]


def test_an_auto_cache_ignores_the_checkpoints_scales(tiny_checkpoint, tmp_path):
    """Scales describe an fp8 cache; a cache in the compute dtype keeps K/V as computed (vLLM
    likewise), so its outputs equal those of the checkpoint without scales."""
    source = tiny_checkpoint("qwen2")
    scaled = write_scaled_checkpoint(source, tmp_path / "scaled", {0: (0.5, 0.25), 2: (3.0, 2.0)})
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, logprobs=3, ignore_eos=True)
    outputs = []
    for checkpoint in (source, scaled):
        engine = cpu_engine(checkpoint)
        assert not engine.model_info.calibrated_kv_cache_scales
        outputs.append(
            ember_sequences(engine.generate(["Hello there", "A"], params, use_tqdm=False))
        )
    assert outputs[0] == outputs[1]


def test_a_bad_scale_in_the_checkpoint_is_named(tiny_checkpoint, tmp_path):
    checkpoint = write_scaled_checkpoint(
        tiny_checkpoint("llama"), tmp_path / "bad", {1: (-2.0, 1.0)}
    )
    with pytest.raises(
        RuntimeError,
        match=r"K/V cache scale 'model\.layers\.1\.self_attn\.k_scale' is -2\.000000 but must be "
        r"positive and finite",
    ):
        cpu_engine(checkpoint, kv_cache_dtype="fp8")
