"""Sampling: seeds, n > 1, stop conditions, logprobs and penalties, on a tiny checkpoint; the
logprobs and greedy penalties are checked against transformers."""

import json
import shutil

import pytest
import torch

from conftest import cpu_engine
from ember import SamplingParams
from hf_reference import (
    encode,
    hf_greedy_one,
    hf_teacher_forced_logprobs,
    load_hf_tokenizer,
    mixed_prompts,
)

ARCH = "llama"


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint(ARCH)


@pytest.fixture(scope="module")
def engine(checkpoint):
    return cpu_engine(checkpoint)


@pytest.fixture(scope="module")
def prompts(checkpoint):
    tokenizer = load_hf_tokenizer(checkpoint)
    return mixed_prompts(tokenizer, len(tokenizer))[:5]


def sample(temperature=1.0, max_tokens=16, **kwargs):
    return SamplingParams(temperature=temperature, max_tokens=max_tokens, ignore_eos=True, **kwargs)


def tokens_of(outputs, index=0):
    return [list(o.outputs[index].token_ids) for o in outputs]


def run(engine, prompts, params):
    return engine.generate(prompts, params, use_tqdm=False)


# ----- seeds ----------------------------------------------------------------------------------


def test_same_seed_same_tokens_alone_and_in_batch(engine, prompts):
    params = sample(seed=42)
    target = prompts[2]
    alone = tokens_of(run(engine, [target], params))[0]
    assert tokens_of(run(engine, [target], params))[0] == alone
    assert tokens_of(run(engine, [prompts[0], target, prompts[1]], params))[1] == alone
    mixed = [sample(seed=42), sample(seed=7), sample(seed=42, top_p=0.9)]
    assert tokens_of(run(engine, [target, prompts[3], prompts[4]], mixed))[0] == alone
    assert tokens_of(run(engine, [prompts[4], prompts[3], target], mixed[::-1]))[2] == alone


def test_different_seeds_give_different_tokens(engine, prompts):
    first = tokens_of(run(engine, prompts, sample(seed=1)))
    second = tokens_of(run(engine, prompts, sample(seed=2)))
    for i, (a, b) in enumerate(zip(first, second, strict=True)):
        assert a != b, f"prompt {i}: seeds 1 and 2 sampled the same 16 tokens {a}"


def test_n_samples_are_indexed_and_differ(engine, prompts):
    (output,) = run(engine, [prompts[0]], sample(n=3, seed=5))
    assert [c.index for c in output.outputs] == [0, 1, 2]
    samples = [tuple(c.token_ids) for c in output.outputs]
    assert all(len(s) == 16 for s in samples)
    assert len(set(samples)) > 1, f"n=3 at temperature 1 gave identical samples {samples}"
    (again,) = run(engine, [prompts[0]], sample(n=3, seed=5))
    assert [tuple(c.token_ids) for c in again.outputs] == samples


def test_n_greedy_samples_are_identical(engine, prompts):
    want = tokens_of(run(engine, [prompts[1]], sample(temperature=0.0)))[0]
    (output,) = run(engine, [prompts[1]], sample(temperature=0.0, n=3))
    assert [list(c.token_ids) for c in output.outputs] == [want] * 3


def test_top_k_one_equals_greedy(engine, prompts):
    greedy = tokens_of(run(engine, prompts, sample(temperature=0.0)))
    assert tokens_of(run(engine, prompts, sample(top_k=1, seed=3))) == greedy


@pytest.mark.parametrize(
    "options",
    [
        {"top_p": 0.8},
        {"min_p": 0.05},
        {"top_k": 20, "top_p": 0.9, "min_p": 0.02},
        {"presence_penalty": 0.5, "frequency_penalty": 0.5, "repetition_penalty": 1.3},
    ],
    ids=["top_p", "min_p", "top_k_top_p_min_p", "penalties"],
)
def test_seeded_filters_and_penalties_are_reproducible(engine, prompts, options):
    params = sample(seed=11, **options)
    first = run(engine, prompts, params)
    assert all(len(o.outputs[0].token_ids) == 16 for o in first)
    assert tokens_of(run(engine, prompts[::-1], params))[::-1] == tokens_of(first)


@pytest.mark.parametrize(
    "penalties",
    [{"presence": 1.5}, {"frequency": 0.7}, {"repetition": 1.8}],
    ids=["presence", "frequency", "repetition"],
)
def test_greedy_penalties_match_reference(engine, checkpoint, hf_model, prompts, penalties):
    names = {"presence": "presence_penalty", "frequency": "frequency_penalty"}
    names["repetition"] = "repetition_penalty"
    params = sample(temperature=0.0, **{names[k]: v for k, v in penalties.items()})
    tokenizer = load_hf_tokenizer(checkpoint)
    for prompt in prompts[:3]:
        got = tokens_of(run(engine, [prompt], params))[0]
        prompt_ids = encode(tokenizer, prompt)
        want = hf_greedy_one(hf_model(checkpoint), prompt_ids, 16, **penalties).token_ids
        assert got == want, f"prompt {prompt_ids[:8]}...: {penalties}"


# ----- stopping -------------------------------------------------------------------------------


def first_unique_alnum_pair(text):
    """Two alphanumeric characters in the later two thirds of text occurring there first."""
    for start in range(max(1, len(text) // 3), len(text) - 1):
        candidate = text[start : start + 2]
        if candidate.isascii() and candidate.isalnum() and text.find(candidate) == start:
            return start, candidate
    return None


def test_stop_string_truncates_text(engine, prompts):
    params = sample(temperature=0.0, max_tokens=24)
    for prompt in prompts:
        full = run(engine, [prompt], params)[0].outputs[0]
        found = first_unique_alnum_pair(full.text)
        if found is not None:
            break
    else:
        pytest.fail("no greedy output holds an alphanumeric pair to stop on")
    start, stop = found
    stopped = run(engine, [prompt], sample(temperature=0.0, max_tokens=24, stop=[stop]))
    completion = stopped[0].outputs[0]
    assert completion.text == full.text[:start]
    assert completion.finish_reason == "stop"
    assert completion.stop_reason == stop
    assert list(completion.token_ids) == list(full.token_ids[: len(completion.token_ids)])
    # The sample finished by the stop string was aborted in the core: nothing is left running
    # and every KV block is free once generate() returns.
    stats = engine.stats()
    assert (stats.num_running, stats.num_waiting, stats.kv_cache_usage) == (0, 0, 0.0)
    assert not engine.core.has_unfinished_requests()


def test_stop_token_id_ends_generation(engine, prompts):
    full = tokens_of(run(engine, [prompts[0]], sample(temperature=0.0)))[0]
    position = next(i for i in range(2, len(full)) if full[i] not in full[:i])
    stop_id = full[position]
    (output,) = run(engine, [prompts[0]], sample(temperature=0.0, stop_token_ids=[stop_id]))
    completion = output.outputs[0]
    assert list(completion.token_ids) == full[: position + 1]
    assert completion.finish_reason == "stop"
    assert completion.stop_reason == stop_id


def test_max_tokens_finishes_with_length(engine, prompts):
    outputs = run(engine, prompts, sample(max_tokens=5, seed=0))
    for output in outputs:
        assert len(output.outputs[0].token_ids) == 5
        assert output.outputs[0].finish_reason == "length"
        assert output.outputs[0].stop_reason is None


@pytest.fixture(scope="module")
def eos_checkpoint(checkpoint, engine, tmp_path_factory):
    """A copy of the checkpoint whose EOS is the first token greedy decoding of "Hello"
    produces, so EOS handling can be observed on random weights. Returns (dir, eos id)."""
    first = tokens_of(run(engine, ["Hello"], sample(temperature=0.0, max_tokens=1)))[0][0]
    directory = tmp_path_factory.mktemp("eos_checkpoint")
    shutil.copytree(checkpoint, directory, dirs_exist_ok=True)
    for name in ("config.json", "generation_config.json"):
        path = directory / name
        config = json.loads(path.read_text())
        config["eos_token_id"] = first
        path.write_text(json.dumps(config))
    return directory, first


def test_eos_stops_min_tokens_delays_it_ignore_eos_skips_it(eos_checkpoint):
    directory, eos = eos_checkpoint
    engine = cpu_engine(directory)
    greedy = {"temperature": 0.0, "max_tokens": 10}

    (stopped,) = run(engine, ["Hello"], SamplingParams(**greedy))
    assert list(stopped.outputs[0].token_ids) == [eos]
    assert stopped.outputs[0].finish_reason == "stop"
    assert stopped.outputs[0].stop_reason is None

    (delayed,) = run(engine, ["Hello"], SamplingParams(**greedy, min_tokens=5))
    token_ids = list(delayed.outputs[0].token_ids)
    assert len(token_ids) >= 5 and eos not in token_ids[:5], token_ids

    (ignored,) = run(engine, ["Hello"], SamplingParams(**greedy, ignore_eos=True))
    assert len(ignored.outputs[0].token_ids) == 10
    assert ignored.outputs[0].token_ids[0] == eos
    assert ignored.outputs[0].finish_reason == "length"


# ----- logprobs -------------------------------------------------------------------------------


def rank_bounds(reference_row, logprob, tolerance=1e-4):
    """The ranks a token of this logprob may have given float noise between implementations."""
    lowest = 1 + int((reference_row > logprob + tolerance).sum())
    highest = 1 + int((reference_row > logprob - tolerance).sum())
    return lowest, highest


@pytest.mark.parametrize("num_logprobs", [0, 3])
def test_sampled_logprobs_match_reference(engine, checkpoint, hf_model, prompts, num_logprobs):
    tokenizer = load_hf_tokenizer(checkpoint)
    outputs = run(engine, prompts[:3], sample(seed=9, logprobs=num_logprobs))
    for prompt, output in zip(prompts[:3], outputs, strict=True):
        completion = output.outputs[0]
        reference = hf_teacher_forced_logprobs(
            hf_model(checkpoint), encode(tokenizer, prompt), completion.token_ids
        )
        assert len(completion.logprobs) == len(completion.token_ids)
        for step, (token, entries) in enumerate(
            zip(completion.token_ids, completion.logprobs, strict=True)
        ):
            row = reference[step]
            assert token in entries
            top = sorted(entries.values(), key=lambda lp: lp.rank)
            sampled_in_top = entries[token].rank <= num_logprobs
            assert len(entries) == num_logprobs + (0 if sampled_in_top else 1)
            for token_id, entry in entries.items():
                assert entry.logprob == pytest.approx(float(row[token_id]), abs=1e-3)
                low, high = rank_bounds(row, float(row[token_id]))
                assert low <= entry.rank <= high, f"step {step} token {token_id}"
            ranks = [lp.rank for lp in top if lp is not entries[token] or sampled_in_top]
            assert ranks == list(range(1, num_logprobs + 1))
        chosen = sum(
            e[t].logprob for t, e in zip(completion.token_ids, completion.logprobs, strict=True)
        )
        assert completion.cumulative_logprob == pytest.approx(chosen, abs=1e-3)


# ----- logit_bias -----------------------------------------------------------------------------


def test_greedy_logit_bias_matches_reference(engine, checkpoint, hf_model, prompts):
    """Each greedy token is the argmax of the reference's logprobs plus the bias (a constant
    shift of a row leaves its argmax where the logits' argmax is)."""
    tokenizer = load_hf_tokenizer(checkpoint)
    prompt = prompts[1]
    plain = tokens_of(run(engine, [prompt], sample(temperature=0.0)))[0]
    # plain[0] last: should an id repeat, its -100 is the one kept.
    bias = {17: 2.5, 30: -1.5, plain[5]: 3.0, plain[3]: -4.0, plain[0]: -100.0}
    biased = tokens_of(run(engine, [prompt], sample(temperature=0.0, logit_bias=bias)))[0]
    assert biased[0] != plain[0] and plain[0] not in biased, biased
    reference = hf_teacher_forced_logprobs(hf_model(checkpoint), encode(tokenizer, prompt), biased)
    shift = torch.zeros(reference.shape[1], dtype=reference.dtype)
    for token_id, value in bias.items():
        shift[token_id] = value
    for step, token in enumerate(biased):
        row = reference[step] + shift
        # Near ties (float noise between implementations) may go either way.
        assert float(row[token]) >= float(row.max()) - 1e-4, f"step {step}: {token}"


def test_logit_bias_forces_and_excludes_tokens_only_in_its_own_rows(engine, prompts):
    greedy = sample(temperature=0.0)
    plain = tokens_of(run(engine, prompts[:3], greedy))
    forced_id = next(t for t in range(5, 400) if all(t not in p for p in plain))
    forced = sample(temperature=0.0, logit_bias={forced_id: 100.0})
    sampled = sample(seed=4, logit_bias={forced_id: 100.0})
    banned = sample(seed=4, logit_bias={t: -100.0 for t in plain[2]})
    outputs = tokens_of(
        run(engine, prompts[:3] + prompts[2:3] * 2, [greedy, forced, greedy, sampled, banned])
    )
    assert outputs[0] == plain[0] and outputs[2] == plain[2]
    assert outputs[1] == [forced_id] * 16
    assert outputs[3] == [forced_id] * 16
    assert not set(outputs[4]) & set(plain[2]), outputs[4]


def test_logit_bias_outside_the_vocabulary_is_rejected(engine, prompts):
    vocab_size = engine.model_info.vocab_size
    with pytest.raises(ValueError) as info:
        run(engine, [prompts[0]], sample(logit_bias={3: 1.0, vocab_size: 1.0}))
    assert str(info.value) == (
        f"prompt 0: logit_bias token id {vocab_size} is outside the vocabulary [0, {vocab_size})"
    )
    assert not engine.core.has_unfinished_requests()
