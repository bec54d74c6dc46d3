"""The reference side of every comparison: Hugging Face transformers on the same weights, and
vLLM's check for greedy outputs that may legitimately differ at a near-tie."""

import dataclasses
import functools
import random

import torch

NUM_TOP_LOGPROBS = 5


@dataclasses.dataclass
class SequenceOutput:
    """One greedy continuation: its tokens, and per step the top logprobs (token id -> logprob,
    including the chosen token)."""

    token_ids: list[int]
    top_logprobs: list[dict[int, float]]

    def chosen_logprobs(self) -> list[float]:
        return [top[t] for t, top in zip(self.token_ids, self.top_logprobs, strict=True)]


@functools.cache
def load_hf_model(path, device="cpu", dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    return model.to(device).eval()


@functools.cache
def load_hf_tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def encode(tokenizer, prompt) -> list[int]:
    """What an engine should see for a prompt: strings tokenized as vLLM does (the tokenizer's
    special tokens added), token lists as given."""
    if isinstance(prompt, str):
        return tokenizer(prompt).input_ids
    return list(prompt)


def penalize(logits, prompt_ids, output_ids, presence=0.0, frequency=0.0, repetition=1.0):
    """vLLM's penalties: repetition over prompt and output tokens (divide positive logits,
    multiply negative ones); presence and frequency over output tokens only."""
    logits = logits.clone()
    if repetition != 1.0:
        seen = torch.tensor(sorted(set(prompt_ids) | set(output_ids)), dtype=torch.long)
        values = logits[seen]
        logits[seen] = torch.where(values > 0, values / repetition, values * repetition)
    if output_ids:
        counts = torch.bincount(torch.tensor(output_ids), minlength=logits.numel()).to(logits)
        logits -= frequency * counts + presence * (counts > 0).to(logits)
    return logits


def top_logprobs(logprobs_row, num: int) -> dict[int, float]:
    values, ids = torch.topk(logprobs_row, num)
    return dict(zip(ids.tolist(), values.tolist(), strict=True))


@torch.no_grad()
def hf_greedy_one(model, prompt_ids, max_tokens, num_logprobs=NUM_TOP_LOGPROBS, **penalties):
    """Greedy decoding with one forward pass per token over a KV cache. Logprobs are the
    model's raw distribution; `penalties` (presence, frequency, repetition) only steer the
    choice of token, as in vLLM."""
    from transformers import DynamicCache

    cache = DynamicCache()
    input_ids = torch.tensor([prompt_ids], device=model.device)
    output_ids, tops = [], []
    for _ in range(max_tokens):
        logits = model(input_ids=input_ids, past_key_values=cache, use_cache=True).logits
        last = logits[0, -1].double().cpu()
        logprobs = torch.log_softmax(last, dim=-1)
        steered = penalize(last, prompt_ids, output_ids, **penalties) if penalties else last
        token = int(torch.argmax(steered))
        top = top_logprobs(logprobs, num_logprobs)
        top[token] = float(logprobs[token])
        output_ids.append(token)
        tops.append(top)
        input_ids = torch.tensor([[token]], device=model.device)
    return SequenceOutput(output_ids, tops)


def hf_greedy(model, prompts_ids, max_tokens, **kwargs) -> list[SequenceOutput]:
    return [hf_greedy_one(model, ids, max_tokens, **kwargs) for ids in prompts_ids]


@torch.no_grad()
def hf_teacher_forced_logprobs(model, prompt_ids, output_ids):
    """[len(output_ids), vocab] float64 logprobs of each output position given all before it."""
    ids = torch.tensor([list(prompt_ids) + list(output_ids)])
    logits = model(input_ids=ids).logits[0].double()
    start = len(prompt_ids) - 1
    return torch.log_softmax(logits[start : start + len(output_ids)], dim=-1)


def ember_sequences(request_outputs, sample_index=0) -> list[SequenceOutput]:
    """ember's RequestOutputs in the reference's shape (the logprobs must have been asked)."""
    sequences = []
    for request_output in request_outputs:
        completion = request_output.outputs[sample_index]
        assert completion.logprobs is not None, "ember returned no logprobs"
        tops = [{t: lp.logprob for t, lp in step.items()} for step in completion.logprobs]
        sequences.append(SequenceOutput(list(completion.token_ids), tops))
    return sequences


def greedy_params(max_tokens: int, num_logprobs=NUM_TOP_LOGPROBS):
    """Greedy, EOS ignored, with the top logprobs that check_outputs_close needs."""
    from ember import SamplingParams

    return SamplingParams(
        temperature=0.0, max_tokens=max_tokens, logprobs=num_logprobs, ignore_eos=True
    )


def first_difference(a: list[int], b: list[int]):
    for position, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return position
    return None if len(a) == len(b) else min(len(a), len(b))


def check_outputs_close(ember_outputs, hf_outputs, name_0="ember", name_1="hf"):
    """vLLM's check_logprobs_close: token lists equal; where they first differ, each side's
    token must be in the other's top logprobs (a near-tie), and the rest is not compared."""
    assert len(ember_outputs) == len(hf_outputs)
    for i, (ours, ref) in enumerate(zip(ember_outputs, hf_outputs, strict=True)):
        assert len(ours.token_ids) == len(ref.token_ids), (
            f"prompt {i}: {name_0} made {len(ours.token_ids)} tokens, {name_1} {len(ref.token_ids)}"
        )
        position = first_difference(ours.token_ids, ref.token_ids)
        if position is None:
            continue
        ours_token, ref_token = ours.token_ids[position], ref.token_ids[position]
        context = (
            f"prompt {i}, position {position}: {name_0} chose {ours_token}, {name_1} chose "
            f"{ref_token}\n{name_0}: {ours.token_ids}\n{name_1}: {ref.token_ids}\n"
            f"{name_0} top: {ours.top_logprobs[position]}\n{name_1} top: "
            f"{ref.top_logprobs[position]}"
        )
        assert ours_token in ref.top_logprobs[position], context
        assert ref_token in ours.top_logprobs[position], context


def check_logprobs_close(ember_outputs, hf_outputs, atol=1e-3):
    """Logprobs of the chosen tokens agree where the token lists agree."""
    for i, (ours, ref) in enumerate(zip(ember_outputs, hf_outputs, strict=True)):
        position = first_difference(ours.token_ids, ref.token_ids)
        agreed = len(ours.token_ids) if position is None else position
        for step in range(agreed):
            got = ours.chosen_logprobs()[step]
            want = ref.chosen_logprobs()[step]
            assert abs(got - want) <= atol, (
                f"prompt {i}, step {step}, token {ours.token_ids[step]}: logprob {got} vs "
                f"reference {want}"
            )


def mixed_prompts(tokenizer, vocab_size: int, seed: int = 0) -> list:
    """Seven prompts of 1 to ~120 tokens: strings of several lengths, and raw token id lists
    (one token, random ids, a long list)."""
    rng = random.Random(seed)
    special = set(tokenizer.all_special_ids)
    ordinary = [t for t in range(vocab_size) if t not in special]
    long_text = (
        "A small engine turns heat into motion: fuel burns in a cylinder, the gas "
        "expands and pushes a piston, and a crankshaft turns that push into rotation. "
        "Farmers along the river grow wheat, barley and apples, and in the autumn the markets "
        "in town are full of baskets, carts and people talking about the harvest."
    )
    return [
        "Hello",
        [rng.choice(ordinary)],
        "What is the capital of France?",
        [rng.choice(ordinary) for _ in range(37)],
        long_text,
        "The river starts high in the hills, where snow melts each spring",
        [rng.choice(ordinary) for _ in range(118)],
    ]


def check_greedy_on_mixed_prompts(engine, reference_model, tokenizer, max_tokens: int) -> None:
    """The engine's greedy tokens on mixed_prompts against the reference model's (vLLM's
    near-tie rule)."""
    prompts = mixed_prompts(tokenizer, len(tokenizer))
    outputs = engine.generate(prompts, greedy_params(max_tokens), use_tqdm=False)
    reference = hf_greedy(reference_model, [encode(tokenizer, p) for p in prompts], max_tokens)
    check_outputs_close(ember_sequences(outputs), reference)
