"""Fill-in-the-middle (FIM) at the document level, in StarCoder's format.

As in bigcode's Megatron-LM ``permute``: with probability ``fim_rate`` a file is
cut at two random character positions into prefix, middle and suffix; each part
is tokenized on its own and the parts are joined with StarCoder's FIM tokens,
either

- PSM: ``<fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle``, or
- SPM (with probability ``fim_spm_rate``):
  ``<fim_prefix> <fim_suffix> suffix <fim_middle> prefix middle``.

The decisions for a file come from a generator seeded by (seed, path), so they do
not change when other files are added or removed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from starcoder_trainer.tokenizer import FIM_MIDDLE, FIM_PAD, FIM_PREFIX, FIM_SUFFIX


@dataclass(frozen=True)
class FimTokenIds:
    """Token ids of the four FIM markers in one tokenizer."""

    prefix: int
    middle: int
    suffix: int
    pad: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> FimTokenIds:
        """Look the markers up; a tokenizer without them cannot do FIM (say which are missing)."""
        ids = {}
        missing = []
        vocab = tokenizer.get_vocab()
        for name, token in (("prefix", FIM_PREFIX), ("middle", FIM_MIDDLE), ("suffix", FIM_SUFFIX), ("pad", FIM_PAD)):
            if token not in vocab:
                missing.append(token)
                continue
            ids[name] = vocab[token]
        if missing:
            raise ValueError(
                f"the tokenizer has no FIM tokens {missing}; set data.fim_rate: 0 "
                "or use a StarCoder-family tokenizer"
            )
        return cls(**ids)


@dataclass(frozen=True)
class FimPlan:
    """What FIM does to one file: where to cut it and which order to use."""

    start: int
    end: int
    spm: bool

    def split(self, text: str) -> tuple[str, str, str]:
        """The (prefix, middle, suffix) parts of ``text``."""
        return text[: self.start], text[self.start : self.end], text[self.end :]


def plan_fim(text: str, path: str, seed: int, fim_rate: float, spm_rate: float) -> FimPlan | None:
    """Decide, reproducibly for (seed, path), whether and how ``text`` is FIM-transformed."""
    if fim_rate <= 0.0:
        return None
    rng = random.Random(f"fim:{seed}:{path}".encode("utf-8", "surrogateescape"))  # paths may hold any bytes
    if rng.random() >= fim_rate:
        return None
    a, b = sorted((rng.randint(0, len(text)), rng.randint(0, len(text))))
    return FimPlan(start=a, end=b, spm=rng.random() < spm_rate)


def join_fim(prefix: list[int], middle: list[int], suffix: list[int], ids: FimTokenIds, spm: bool) -> list[int]:
    """Join the tokenized parts with the FIM markers in PSM or SPM order."""
    if spm:
        return [ids.prefix, ids.suffix, *suffix, ids.middle, *prefix, *middle]
    return [ids.prefix, *prefix, ids.suffix, *suffix, ids.middle, *middle]
