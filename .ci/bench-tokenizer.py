"""Trains the byte-level BPE (4096 tokens) that the serving benchmarks serve beside dummy
weights, on the repo's Markdown files, and saves it to the folder given: the dummy checkpoints
have no tokenizer, and the load generator sends text (detokenization is part of a server's
cost, as in vLLM's benchmark). Usage: python3 .ci/bench-tokenizer.py DIR"""

import pathlib
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

root = pathlib.Path(__file__).resolve().parent.parent
text = [p.read_text() for p in sorted(root.glob("**/*.md")) if "build" not in p.parts]
bpe = Tokenizer(models.BPE())
bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
bpe.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(
    vocab_size=4096,
    special_tokens=["<s>", "</s>"],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
)
bpe.train_from_iterator(text, trainer=trainer)
PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>").save_pretrained(
    sys.argv[1]
)
