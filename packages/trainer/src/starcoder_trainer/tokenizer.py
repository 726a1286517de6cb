"""A small byte-level BPE tokenizer for the tiny StarCoder preset, trained locally.

The real StarCoder tokenizers are byte-level BPE with a fixed list of special
tokens (end of text, the fill-in-the-middle markers, metadata markers). The tiny
preset cannot download one, so it trains the same kind of tokenizer on the
training split with the `tokenizers` library and wraps it as a transformers
fast tokenizer: ``save_pretrained`` writes it and ``AutoTokenizer.from_pretrained``
loads it back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

#: StarCoder's special tokens, in StarCoder's id order (ids 0..18 in the tiny vocab too).
EOS_TOKEN = "<|endoftext|>"
FIM_PREFIX = "<fim_prefix>"
FIM_MIDDLE = "<fim_middle>"
FIM_SUFFIX = "<fim_suffix>"
FIM_PAD = "<fim_pad>"
STARCODER_SPECIAL_TOKENS: tuple[str, ...] = (
    EOS_TOKEN,
    FIM_PREFIX,
    FIM_MIDDLE,
    FIM_SUFFIX,
    FIM_PAD,
    "<filename>",
    "<gh_stars>",
    "<issue_start>",
    "<issue_comment>",
    "<issue_closed>",
    "<jupyter_start>",
    "<jupyter_text>",
    "<jupyter_code>",
    "<jupyter_output>",
    "<empty_output>",
    "<commit_before>",
    "<commit_msg>",
    "<commit_after>",
    "<reponame>",
)

#: Smallest vocabulary that holds the 256 byte symbols plus the special tokens.
MIN_VOCAB_SIZE = 256 + len(STARCODER_SPECIAL_TOKENS)


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Train a byte-level BPE tokenizer with StarCoder's special tokens on ``texts``.

    Returns a ``transformers.PreTrainedTokenizerFast`` whose eos, bos, unk and pad
    tokens are all ``<|endoftext|>`` (as in StarCoder). It holds at most ``vocab_size``
    tokens: fewer when the texts run out of pairs to merge, so size the model's
    embedding with ``max(vocab_size, len(tokenizer))``. The same texts in the same
    order give the same tokenizer (vocabulary and merges), so its fingerprint is
    stable across runs.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size must be an integer >= {MIN_VOCAB_SIZE} (256 bytes + {len(STARCODER_SPECIAL_TOKENS)} "
            f"special tokens), got {vocab_size!r}; raise model.vocab_size in config.yaml"
        )
    backend = Tokenizer(models.BPE())
    # As StarCoder: digits split one by one, then GPT-2 style byte-level pre-tokenization.
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(STARCODER_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        additional_special_tokens=list(STARCODER_SPECIAL_TOKENS[1:]),
        clean_up_tokenization_spaces=False,
    )


def tokenizer_fingerprint(tokenizer) -> str:
    """A sha256 hex digest of what decides the token ids: vocabulary, merges, special tokens.

    Fast tokenizers are hashed through their full ``tokenizer.json`` serialization
    (which holds the vocabulary, merges, normalizer and pre-tokenizer); others
    through their vocabulary. The special-token map and class name are added.
    """
    digest = hashlib.sha256()
    digest.update(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        vocab = sorted(tokenizer.get_vocab().items())
        digest.update(json.dumps(vocab, ensure_ascii=False).encode())
    specials = {k: str(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())}
    digest.update(json.dumps(specials, sort_keys=True).encode())
    return digest.hexdigest()
