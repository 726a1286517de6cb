"""Fixtures for the trainer's loop tests: a small temporary git repository and a tiny config.

Models stay tiny (2 layers, 64 wide, vocab 400, blocks of 32 tokens) so a training
step takes well under a second on a CPU.
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

SAMPLE_FILES = {
    "pkg/__init__.py": '"""A tiny package."""\n\nfrom pkg.shapes import Circle, Square\n',
    "pkg/shapes.py": textwrap.dedent(
        '''
        import math


        class Circle:
            """A circle with a radius."""

            def __init__(self, radius: float) -> None:
                self.radius = radius

            def area(self) -> float:
                return math.pi * self.radius ** 2

            def perimeter(self) -> float:
                return 2 * math.pi * self.radius


        class Square:
            """A square with a side."""

            def __init__(self, side: float) -> None:
                self.side = side

            def area(self) -> float:
                return self.side * self.side

            def perimeter(self) -> float:
                return 4 * self.side
        '''
    ),
    "pkg/numbers.py": textwrap.dedent(
        '''
        def fibonacci(n: int) -> list[int]:
            """The first n Fibonacci numbers."""
            out = [0, 1]
            while len(out) < n:
                out.append(out[-1] + out[-2])
            return out[:n]


        def is_prime(n: int) -> bool:
            if n < 2:
                return False
            for d in range(2, int(n ** 0.5) + 1):
                if n % d == 0:
                    return False
            return True


        def primes(limit: int) -> list[int]:
            return [n for n in range(limit) if is_prime(n)]
        '''
    ),
    "pkg/text.py": textwrap.dedent(
        '''
        def words(text: str) -> list[str]:
            return [w for w in text.split() if w]


        def count_words(text: str) -> dict[str, int]:
            counts: dict[str, int] = {}
            for w in words(text):
                counts[w] = counts.get(w, 0) + 1
            return counts


        def title(text: str) -> str:
            return " ".join(w.capitalize() for w in words(text))
        '''
    ),
    "tests/test_numbers.py": textwrap.dedent(
        '''
        from pkg.numbers import fibonacci, is_prime, primes


        def test_fibonacci():
            assert fibonacci(6) == [0, 1, 1, 2, 3, 5]


        def test_primes():
            assert primes(12) == [2, 3, 5, 7, 11]
            assert not is_prime(1)
        '''
    ),
    "README.md": "# pkg\n\nShapes, numbers and words: a tiny package to train a tiny model on.\n" * 3,
}

TINY = [
    "device.request=cpu",
    "orchard.mode=off",
    "model.tiny.n_layer=2",
    "model.tiny.n_embd=64",
    "model.tiny.n_head=4",
    "model.tiny.vocab_size=400",
    "model.tiny.n_positions=64",
    "data.seq_len=32",
    "data.val_fraction=0.2",
    "train.batch_size=4",
    "train.max_steps=2",
    "train.warmup_steps=1",
    "train.lr=0.003",
    "train.eval_every=0",
    "train.eval_batches=2",
    "train.log_every=1",
    "train.save_every=0",
    "train.progress=false",
    "output.dir=runs",
    "output.run=t",
    "output.plot=false",
]


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "init.defaultBranch=main", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    """A committed git repository of a few Python files (the data and the repository root)."""
    repo = tmp_path / "repo"
    for rel, text in SAMPLE_FILES.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    (repo / ".gitignore").write_text("runs/\n.cache/\n", encoding="utf-8")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "sample")
    return repo


@pytest.fixture
def tiny_config(git_repo: Path):
    """make(*overrides) -> Config: the tiny CPU config on ``git_repo``, plus ``key=value`` overrides."""
    from starcoder_trainer.config import load_config

    def make(*overrides: str):
        return load_config(None, [*TINY, *overrides], root=git_repo)

    return make


@pytest.fixture
def tiny_overrides() -> list[str]:
    """The tiny config as ``key=value`` strings (for --set on the command line)."""
    return list(TINY)


@pytest.fixture
def quiet_log():
    """A log callable that keeps the lines (tests read them) instead of printing."""
    lines: list[str] = []
    lines_append = lines.append

    def log(message: str) -> None:
        lines_append(message)

    log.lines = lines  # type: ignore[attr-defined]
    return log
