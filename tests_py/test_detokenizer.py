"""Incremental detokenization against the tokenizer's own full decode."""

import functools

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ember.bench_tokenizer import train_byte_level_bpe
from ember.detokenizer import find_stop_string, make_incremental_detokenizer

# Non-ASCII text the tokenizer never merged: its characters are split across byte tokens.
TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "héllo wörld, ça va? naïve café",
    "日本語のテキスト and 中文 mixed",
    "emoji 🙂🚀 and 👩‍👩‍👧 family",
    "  leading spaces\nnew lines\ttabs  ",
]


@functools.cache
def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE (GPT-2 style), trained offline; few merges beyond the bytes."""
    return train_byte_level_bpe(["the quick brown fox jumps over the lazy dog"] * 5, 300)


def metaspace_tokenizer() -> PreTrainedTokenizerFast:
    """SentencePiece-style: the decoder drops the leading space of a sequence."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=120, special_tokens=["<unk>", "</s>"], show_progress=False
    )
    tokenizer.train_from_iterator(["hello world the quick brown fox"] * 5, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>")


class SlowTokenizer:
    """Has decode() but no backend_tokenizer, like a Python-only tokenizer."""

    def __init__(self, fast):
        self._fast = fast

    def decode(self, ids, skip_special_tokens=False):
        return self._fast.decode(ids, skip_special_tokens=skip_special_tokens)


def decode_one_by_one(tokenizer, prompt_ids, output_ids, skip_special_tokens=True):
    detokenizer = make_incremental_detokenizer(tokenizer, prompt_ids, skip_special_tokens)
    deltas = [detokenizer.add(token_id) for token_id in output_ids]
    return "".join(deltas), deltas


@pytest.mark.parametrize("slow", [False, True], ids=["fast", "slow"])
@pytest.mark.parametrize("text", TEXTS)
def test_incremental_equals_full_decode(text, slow):
    fast = byte_level_tokenizer()
    tokenizer = SlowTokenizer(fast) if slow else fast
    prompt_ids = fast("the fox says: ").input_ids
    output_ids = fast(text).input_ids
    result, _ = decode_one_by_one(tokenizer, prompt_ids, output_ids)
    assert result == fast.decode(output_ids, skip_special_tokens=True)


def test_utf8_character_split_across_tokens_is_emitted_whole():
    tokenizer = byte_level_tokenizer()
    output_ids = tokenizer("🙂").input_ids
    assert len(output_ids) > 1, "the emoji should span several byte tokens"
    text, deltas = decode_one_by_one(tokenizer, [], output_ids)
    assert text == "🙂"
    assert deltas[:-1] == [""] * (len(output_ids) - 1)  # nothing until the character is whole
    assert "\ufffd" not in "".join(deltas)


@pytest.mark.parametrize("skip", [True, False])
def test_skip_special_tokens(skip):
    tokenizer = byte_level_tokenizer()
    output_ids = tokenizer("the fox</s> jumps").input_ids
    assert tokenizer.eos_token_id in output_ids
    text, _ = decode_one_by_one(tokenizer, [], output_ids, skip_special_tokens=skip)
    assert text == tokenizer.decode(output_ids, skip_special_tokens=skip)
    assert ("</s>" in text) == (not skip)


def test_metaspace_first_token_keeps_its_space_after_the_prompt():
    tokenizer = metaspace_tokenizer()
    prompt_ids = tokenizer("hello").input_ids
    output_ids = tokenizer("hello world fox").input_ids[len(prompt_ids) :]
    text, _ = decode_one_by_one(tokenizer, prompt_ids, output_ids)
    assert text == " world fox"


def test_find_stop_string_earliest_match():
    assert find_stop_string("abc STOP def END", 16, ["END", "STOP"]) == (4, "STOP")
    assert find_stop_string("no match here", 5, ["STOP"]) is None
    assert find_stop_string("anything", 3, []) is None


def test_find_stop_string_searches_only_new_text_and_overlap():
    text = "STOP then more ST"
    # "STOP" at 0 is old text; only the last 2 new characters plus 3 before them are searched.
    assert find_stop_string(text, 2, ["STOP"]) is None
    assert find_stop_string(text + "OP", 2, ["STOP"]) == (len(text) - 2, "STOP")
