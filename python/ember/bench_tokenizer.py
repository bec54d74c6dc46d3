"""A byte-level BPE trained on the spot, for checkpoints that have no tokenizer.

The serving benchmarks serve dummy weights, which come without a tokenizer, while the load
generator sends text; they serve this one beside them, so that detokenization is part of the
server's cost as in vLLM's benchmark. The tests use it for tiny checkpoints.

    python3 -m ember.bench_tokenizer DIR [--corpus ROOT] [--vocab-size N]

trains on the Markdown files under ROOT (default: the current directory) and saves to DIR.
"""

from __future__ import annotations

import argparse
import pathlib

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast


def train_byte_level_bpe(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A GPT-2 style byte-level BPE with <s> and </s>, trained on `texts`."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python3 -m ember.bench_tokenizer")
    parser.add_argument("out_dir", type=pathlib.Path)
    parser.add_argument("--corpus", type=pathlib.Path, default=pathlib.Path("."))
    parser.add_argument("--vocab-size", type=int, default=4096)
    args = parser.parse_args()
    files = sorted(p for p in args.corpus.glob("**/*.md") if "build" not in p.parts)
    if not files:
        parser.error(f"no Markdown files under {args.corpus} to train on")
    texts = [p.read_text() for p in files]
    train_byte_level_bpe(texts, args.vocab_size).save_pretrained(args.out_dir)


if __name__ == "__main__":
    main()
