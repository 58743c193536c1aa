"""The fake worker's word-level "tokenizer": token ``t`` <-> the word ``w<t>``.

Text that is not made of ``w<int>`` words still tokenizes deterministically (each word hashes into the
vocabulary), so any prompt works. :func:`save_tokenizer_dir` writes the same vocabulary as a Hugging Face
tokenizer directory, so tools that need ``AutoTokenizer`` (``sglang.bench_serving``, the router's
``--tokenizer-path``) agree with the fake worker token for token on ``w<int>`` text.
"""

from __future__ import annotations

import json
import os
import zlib

DEFAULT_VOCAB = 1000


def word_to_id(word: str, vocab: int = DEFAULT_VOCAB) -> int:
    if word.startswith("w") and word[1:].isdigit():
        t = int(word[1:])
        if t < vocab:
            return t
    return zlib.crc32(word.encode()) % vocab


def encode(text: str, vocab: int = DEFAULT_VOCAB) -> list[int]:
    return [word_to_id(w, vocab) for w in text.split()]


def decode(ids: list[int]) -> str:
    """Text of generated ids; each token is `` w<t>`` so concatenated pieces equal the whole decode."""
    return "".join(f" w{t}" for t in ids)


def save_tokenizer_dir(path: str, vocab: int = DEFAULT_VOCAB) -> str:
    """Write a ``PreTrainedTokenizerFast`` directory for the fake vocabulary; returns ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    os.makedirs(path, exist_ok=True)
    words = {f"w{i}": i for i in range(vocab)}
    words["[UNK]"] = vocab
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tok.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "unk_token": "[UNK]",
                "model_max_length": 1 << 20,
                "clean_up_tokenization_spaces": False,
            },
            f,
        )
    with open(os.path.join(path, "special_tokens_map.json"), "w") as f:
        json.dump({"unk_token": "[UNK]"}, f)
    return path


def save_sharegpt_json(path: str, n: int = 200, vocab: int = DEFAULT_VOCAB, seed: int = 0) -> str:
    """A small ShareGPT-format file of ``w<int>`` conversations, so ``sglang.bench_serving --dataset-name random
    --dataset-path PATH`` runs offline (it samples prompt tokens from ShareGPT)."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        q = " ".join(f"w{rng.randrange(vocab)}" for _ in range(rng.randint(16, 256)))
        a = " ".join(f"w{rng.randrange(vocab)}" for _ in range(rng.randint(16, 256)))
        rows.append({"id": str(i), "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]})
    with open(path, "w") as f:
        json.dump(rows, f)
    return path
