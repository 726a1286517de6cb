"""The tiny preset's tokenizer: StarCoder special tokens, determinism, save/load round trip."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from starcoder_trainer.tokenizer import (
    EOS_TOKEN,
    FIM_MIDDLE,
    FIM_PREFIX,
    FIM_SUFFIX,
    MIN_VOCAB_SIZE,
    STARCODER_SPECIAL_TOKENS,
    tokenizer_fingerprint,
    train_tokenizer,
)
from transformers import AutoTokenizer

TEXTS = [
    "def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "# Notes\n\nUnicode stays intact: naïve café ∑ 😀\n",
    "for i in range(10):\n    if i % 2 == 0:\n        print(i)\n",
] * 3


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, 400)


def test_special_tokens_in_starcoder_order(tokenizer):
    vocab = tokenizer.get_vocab()
    assert [vocab[t] for t in STARCODER_SPECIAL_TOKENS] == list(range(len(STARCODER_SPECIAL_TOKENS)))
    assert {FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, "<fim_pad>", "<filename>", "<gh_stars>"} <= set(vocab)
    for role in ("eos_token", "bos_token", "unk_token", "pad_token"):
        assert getattr(tokenizer, role) == EOS_TOKEN
    assert tokenizer.eos_token_id == 0 == tokenizer.pad_token_id
    # BPE stops early when the texts hold no more pairs to merge: at most vocab_size tokens
    assert MIN_VOCAB_SIZE < len(tokenizer) <= 400
    assert len(train_tokenizer(TEXTS * 20, MIN_VOCAB_SIZE + 40)) == MIN_VOCAB_SIZE + 40


def test_round_trips_text_bytes(tokenizer):
    text = "x = 'naïve ∑ 😀'\n\tif x:  pass\r\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    # digits are split one by one, as in StarCoder
    assert len(tokenizer("12345", add_special_tokens=False)["input_ids"]) == 5


def test_training_is_deterministic(tokenizer):
    again = train_tokenizer(list(TEXTS), 400)
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(tokenizer)


def test_fingerprint_tracks_vocabulary(tokenizer):
    assert tokenizer_fingerprint(train_tokenizer(TEXTS, 350)) != tokenizer_fingerprint(tokenizer)
    assert tokenizer_fingerprint(train_tokenizer(TEXTS[:2], 400)) != tokenizer_fingerprint(tokenizer)


def test_save_pretrained_loads_with_auto_tokenizer(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "def f(x):\n    return x * 2  # <fim_prefix> stays special here\n"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.eos_token == EOS_TOKEN and loaded.pad_token == EOS_TOKEN
    assert loaded.convert_tokens_to_ids(FIM_MIDDLE) == tokenizer.convert_tokens_to_ids(FIM_MIDDLE) == 2
    # the dataset cache key must survive a save/load cycle, or every run would re-tokenize
    assert tokenizer_fingerprint(loaded) == tokenizer_fingerprint(tokenizer)


def test_too_small_vocab_is_refused():
    with pytest.raises(ValueError, match=f"vocab_size must be an integer >= {MIN_VOCAB_SIZE}"):
        train_tokenizer(TEXTS, 100)


def test_training_is_deterministic_across_processes(tokenizer, tmp_path):
    # Rust hash maps are seeded per process: the merges must not depend on it
    corpus = tmp_path / "texts.json"
    corpus.write_text(json.dumps(TEXTS))
    code = (
        "import json, sys; from starcoder_trainer.tokenizer import train_tokenizer, tokenizer_fingerprint; "
        "print(tokenizer_fingerprint(train_tokenizer(json.load(open(sys.argv[1])), 400)))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(corpus)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == tokenizer_fingerprint(tokenizer)
