"""Data pipeline: git collection and its skip reasons, split, FIM, packing, cache."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest
import torch
from starcoder_trainer import data as data_mod
from starcoder_trainer.data import (
    SKIP_REASONS,
    DataConfig,
    DataError,
    SourceFile,
    _glob_regex,
    build_dataset,
    collect_and_split,
    collect_files,
    pack,
    prepare_tiny_tokenizer,
    split_files,
    tokenize_files,
)
from starcoder_trainer.fim import FimTokenIds, join_fim, plan_fim
from starcoder_trainer.tokenizer import tokenizer_fingerprint, train_tokenizer

# --------------------------------------------------------------------------- helpers


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.email=a@b", "-c", "user.name=t", "-c", "commit.gpgsign=false", *args],
        check=True, capture_output=True, text=True, env=env,
    ).stdout  # fmt: skip


def make_repo(path: Path, files: dict[str, str | bytes]) -> Path:
    """A git repository at ``path`` with ``files`` committed."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q")
    write(path, files)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "init")
    return path


def write(repo: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        target = repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")


def commit_all(repo: Path, message: str = "change") -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


def code_file(i: int, rng: random.Random) -> str:
    """A plausible, distinct Python file of varied length."""
    names = ["alpha", "beta", "gamma", "delta", "value", "items", "count", "total", "result", "index"]
    lines = [f'"""Module {i}: helpers."""', "", "import math", ""]
    for j in range(rng.randint(2, 12)):
        a, b = rng.sample(names, 2)
        lines += [
            f"def {a}_{b}_{i}_{j}({a}, {b}=None):",
            f'    """Return the {a} combined with {b} ({rng.randint(0, 999)})."""',
            f"    if {b} is None:",
            f"        {b} = {rng.randint(1, 100)}",
            f"    return math.sqrt(abs({a})) * {b} + {rng.random():.4f}",
            "",
        ]
    return "\n".join(lines) + "\n"


def code_repo(path: Path, n_files: int = 60, seed: int = 0) -> Path:
    rng = random.Random(seed)
    return make_repo(path, {f"pkg/mod_{i:03d}.py": code_file(i, rng) for i in range(n_files)})


@pytest.fixture(scope="module")
def tokenizer():
    rng = random.Random(1)
    return train_tokenizer([code_file(i, rng) for i in range(40)], 600)


# --------------------------------------------------------------------------- config


def test_default_config_is_valid():
    assert DataConfig().validate() == []


def test_validate_collects_every_problem_with_key_paths():
    cfg = DataConfig(repo="", seq_len="long", val_fraction=1.0, fim_rate=-0.1, max_file_bytes=True, include="*.py")
    problems = cfg.validate()
    assert "data.seq_len: expected an integer >= 2, got 'long'" in problems
    assert "data.val_fraction: expected a number in [0, 1), got 1.0" in problems
    assert "data.fim_rate: expected a number in [0, 1], got -0.1" in problems
    assert "data.max_file_bytes: expected an integer >= 1, got True" in problems
    assert "data.include: expected a list of non-empty strings, got '*.py'" in problems
    assert any(p.startswith("data.repo: expected a non-empty path") for p in problems)
    assert len(problems) == 6


# --------------------------------------------------------------------------- collect


def test_each_skip_reason_is_counted(tmp_path):
    outside = tmp_path / "outside.py"
    outside.write_text("print('outside')\n")
    repo = make_repo(
        tmp_path / "repo",
        {
            "keep.py": "print('kept')\n",
            "copy_of_keep.py": "print('kept')\n",  # duplicate (path order: copy_of_keep.py < keep.py)
            "blob.txt": b"abc\0def\n",  # binary: NUL byte
            "latin1.txt": "caf\xe9\n".encode("latin-1"),  # binary: not UTF-8
            "big.txt": "x = 1\n" * 400,  # too_large (> 1000 bytes)
            "bundle.js": "var a=1;" * 100 + "\n",  # generated: one 800-character line
            "blank.md": "  \n\n",  # empty
            "image.png": b"\x89PNG\r\n",  # excluded by extension
            "yarn.lock": "lock\n",  # excluded by the default exclude globs
            ".gitignore": "ignored.py\n",
        },
    )
    (repo / "ignored.py").write_text("print('never listed')\n")  # .gitignore holds: not tracked
    os.symlink(outside, repo / "escape.py")
    os.symlink("keep.py", repo / "alias.py")  # inside the repo: read, then a duplicate of keep.py
    git(repo, "add", "escape.py", "alias.py")
    git(repo, "update-index", "--add", "--cacheinfo", f"160000,{'a' * 40},sub")  # a submodule's gitlink
    git(repo, "commit", "-q", "-m", "links")

    cfg = DataConfig(max_file_bytes=1000, max_line_length=500, extensions=[".py", ".txt", ".js", ".md"])
    selection = collect_files(repo, cfg)

    assert [f.path for f in selection.kept] == ["alias.py"]  # first in path order; the others duplicate it
    assert selection.kept[0].text == "print('kept')\n"
    assert selection.skipped == {
        "submodule": 1,
        "excluded": 3,  # image.png, yarn.lock, .gitignore (no listed extension)
        "symlink_outside": 1,
        "missing": 0,
        "too_large": 1,
        "binary": 2,
        "empty": 1,
        "generated": 1,
        "duplicate": 2,
    }
    assert set(selection.skipped) == set(SKIP_REASONS)
    assert selection.listed == 13
    assert sum(selection.skipped.values()) + len(selection.kept) == selection.listed


def test_deleted_tracked_file_counts_as_missing(tmp_path):
    repo = make_repo(tmp_path / "repo", {"a.py": "a = 1\n", "b.py": "b = 2\n"})
    (repo / "b.py").unlink()
    selection = collect_files(repo, DataConfig())
    assert [f.path for f in selection.kept] == ["a.py"] and selection.skipped["missing"] == 1


def test_include_exclude_and_extensions(tmp_path):
    repo = make_repo(
        tmp_path / "repo",
        {
            "src/app/main.py": "main = 1\n",
            "src/app/gen/auto.py": "auto = 1\n",
            "src/util.c": "int x;\n",
            "src/notes.md": "# notes\n",
            "tests/test_main.py": "t = 1\n",
            "Makefile": "all:\n\techo hi\n",
        },
    )

    def kept(**kw) -> list[str]:
        return [f.path for f in collect_files(repo, DataConfig(**kw)).kept]

    assert kept() == ["Makefile", "src/app/gen/auto.py", "src/app/main.py", "src/notes.md", "src/util.c",
                      "tests/test_main.py"]  # fmt: skip
    assert kept(include=["src/**"], exclude=["gen/"]) == ["src/app/main.py", "src/notes.md", "src/util.c"]
    assert kept(include=["src/**"], extensions=[".py", ".C"]) == ["src/app/gen/auto.py", "src/app/main.py", "src/util.c"]
    assert kept(exclude=["*.md", "tests/*.py", "Makefile"]) == ["src/app/gen/auto.py", "src/app/main.py", "src/util.c"]
    assert kept(extensions=["makefile"]) == ["Makefile"]


def test_data_repo_can_be_a_subfolder(tmp_path):
    repo = make_repo(tmp_path / "repo", {"lib/a.py": "a = 1\n", "other/b.py": "b = 2\n"})
    train, val, selection = collect_and_split(repo, DataConfig(repo="lib", val_fraction=0.0))
    assert [f.path for f in train] == ["a.py"] and val == [] and selection.listed == 1


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("*.lock", "deep/dir/Cargo.lock", True),
        ("*.lock", "lockfile.py", False),
        ("src/*.py", "src/a.py", True),
        ("src/*.py", "src/sub/a.py", False),
        ("src/**/*.py", "src/a.py", True),
        ("src/**/*.py", "src/x/y/a.py", True),
        ("src/**", "src/x/y/a.py", True),
        ("src/**", "lib/src/a.py", False),
        ("vendor/", "a/vendor/lib.py", True),
        ("vendor/", "vendor.py", False),
        ("docs", "docs/index.md", True),
        ("file?.py", "file1.py", True),
        ("file[!0-9].py", "file1.py", False),
        ("file[!0-9].py", "filea.py", True),
        ("a+b.py", "a+b.py", True),
    ],
)
def test_glob_semantics(pattern, path, matches):
    assert bool(_glob_regex(pattern).fullmatch(path)) is matches


def test_empty_result_names_the_filters(tmp_path):
    repo = make_repo(tmp_path / "repo", {"logo.png": b"\x89PNG", "data.bin": b"\0\0"})
    with pytest.raises(DataError) as info:
        collect_files(repo, DataConfig())
    message = str(info.value)
    assert "no usable files" in message and "skipped: excluded=2" in message
    assert "data.extensions=" in message and "data.include=" in message and "data.exclude=" in message
    assert "--set data.extensions=[]" in message


def test_not_a_git_repository_is_a_clear_error(tmp_path):
    (tmp_path / "a.py").write_text("a = 1\n")
    with pytest.raises(DataError, match="not inside a git repository.*git init"):
        collect_files(tmp_path, DataConfig())
    with pytest.raises(DataError, match="is not a folder"):
        collect_files(tmp_path / "nope", DataConfig())


# --------------------------------------------------------------------------- split


def fake_files(n: int) -> list[SourceFile]:
    return [SourceFile(path=f"f{i:03d}.py", text=f"x = {i}\n", sha256=str(i)) for i in range(n)]


def test_split_is_deterministic_and_seeded():
    files = fake_files(200)
    train, val = split_files(files, 0.1, seed=7)
    assert split_files(files, 0.1, seed=7) == (train, val)
    assert {f.path for f in split_files(files, 0.1, seed=8)[1]} != {f.path for f in val}
    assert 8 <= len(val) <= 35 and len(train) + len(val) == 200
    assert not {f.path for f in train} & {f.path for f in val}


def test_split_is_stable_when_files_are_added():
    base = fake_files(100)
    _, val = split_files(base, 0.2, seed=3)
    _, val_more = split_files(base + [SourceFile("new.py", "n = 1\n", "n")], 0.2, seed=3)
    assert {f.path for f in val} <= {f.path for f in val_more}


@pytest.mark.parametrize("n", [2, 3, 5])
def test_split_gives_each_side_a_file(n):
    for seed in range(20):
        train, val = split_files(fake_files(n), 0.05, seed)
        assert train and val
        train, val = split_files(fake_files(n), 0.95, seed)
        assert train and val


def test_split_without_validation():
    assert split_files(fake_files(10), 0.0, 1) == (fake_files(10), [])
    assert split_files(fake_files(1), 0.5, 1) in [(fake_files(1), []), ([], fake_files(1))]


# --------------------------------------------------------------------------- FIM


def test_join_fim_orders():
    ids = FimTokenIds(prefix=1, middle=2, suffix=3, pad=4)
    p, m, s = [10, 11], [20], [30, 31, 32]
    assert join_fim(p, m, s, ids, spm=False) == [1, 10, 11, 3, 30, 31, 32, 2, 20]  # PSM
    assert join_fim(p, m, s, ids, spm=True) == [1, 3, 30, 31, 32, 2, 10, 11, 20]  # SPM


def test_fim_plan_rates():
    text = "abcdefghij" * 10
    paths = [f"f{i}.py" for i in range(300)]
    assert all(plan_fim(text, p, 0, 0.0, 0.5) is None for p in paths)
    plans = [plan_fim(text, p, 0, 1.0, 0.5) for p in paths]
    assert all(plans)
    assert 100 < sum(p.spm for p in plans) < 200
    assert all(plan_fim(text, p, 0, 1.0, 1.0).spm for p in paths)
    assert not any(plan_fim(text, p, 0, 1.0, 0.0).spm for p in paths)
    assert 90 < sum(plan_fim(text, p, 0, 0.5, 0.5) is not None for p in paths) < 210
    assert plans == [plan_fim(text, p, 0, 1.0, 0.5) for p in paths]  # reproducible
    for plan in plans:
        assert 0 <= plan.start <= plan.end <= len(text)
        assert "".join(plan.split(text)) == text


def test_fim_rate_zero_is_identity(tokenizer):
    files = [SourceFile(f"m{i}.py", code_file(i, random.Random(i)), str(i)) for i in range(5)]
    docs, n_fim = tokenize_files(files, tokenizer, DataConfig(fim_rate=0.0))
    assert n_fim == 0
    plain = tokenizer([f.text for f in files], add_special_tokens=False)["input_ids"]
    assert docs == [ids + [tokenizer.eos_token_id] for ids in plain]


@pytest.mark.parametrize("spm_rate", [0.0, 1.0])
def test_fim_rate_one_transforms_every_file(tokenizer, spm_rate):
    files = [SourceFile(f"m{i}.py", code_file(i, random.Random(i)), str(i)) for i in range(8)]
    docs, n_fim = tokenize_files(files, tokenizer, DataConfig(fim_rate=1.0, fim_spm_rate=spm_rate))
    assert n_fim == len(files)
    fim = FimTokenIds.from_tokenizer(tokenizer)
    for f, doc in zip(files, docs, strict=True):
        assert doc[0] == fim.prefix and doc[-1] == tokenizer.eos_token_id
        body = doc[1:-1]
        assert body.count(fim.suffix) == 1 and body.count(fim.middle) == 1
        if spm_rate == 1.0:  # <fim_prefix><fim_suffix> suffix <fim_middle> prefix middle
            assert body[0] == fim.suffix
            cut = body.index(fim.middle)
            suffix, prefix_middle = body[1:cut], body[cut + 1 :]
            plan = plan_fim(f.text, f.path, DataConfig().seed, 1.0, 1.0)
            prefix, middle, suffix_text = plan.split(f.text)
            assert tokenizer.decode(suffix) == suffix_text
            assert tokenizer.decode(prefix_middle) == prefix + middle
        else:  # <fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle
            s, m = body.index(fim.suffix), body.index(fim.middle)
            assert s < m
            prefix, suffix, middle = body[:s], body[s + 1 : m], body[m + 1 :]
            assert tokenizer.decode(prefix + middle + suffix) == f.text


def test_fim_needs_fim_tokens():
    class NoFim:
        def get_vocab(self):
            return {"<|endoftext|>": 0}

    with pytest.raises(ValueError, match=r"no FIM tokens .*data.fim_rate: 0"):
        FimTokenIds.from_tokenizer(NoFim())


# --------------------------------------------------------------------------- pack


def test_pack_drops_only_the_tail():
    docs = [[1, 2, 3, 0], [4, 5, 0], [6, 7, 8, 9, 0]]
    blocks, n = pack(docs, 4)
    assert n == 12 and blocks.dtype == torch.long
    assert blocks.tolist() == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 0]]
    blocks, n = pack(docs, 5)
    assert blocks.tolist() == [[1, 2, 3, 0, 4], [5, 0, 6, 7, 8]] and n == 12


def test_pack_short_stream_is_one_short_block():
    blocks, n = pack([[1, 2, 0]], 8)
    assert blocks.tolist() == [[1, 2, 0]] and n == 3
    empty, n = pack([], 8)
    assert tuple(empty.shape) == (0, 8) and n == 0


def test_eos_between_files_and_stream_order(tmp_path, tokenizer):
    repo = code_repo(tmp_path / "repo", n_files=6)
    cfg = DataConfig(seq_len=16, val_fraction=0.0, cache_dir="")
    ds = build_dataset(repo, cfg, tokenizer)
    train_files, _, _ = collect_and_split(repo, cfg)
    expected = []
    for f in train_files:
        expected += tokenizer(f.text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    stream = ds.train.flatten().tolist()
    assert stream == expected[: len(stream)] and len(expected) - len(stream) < 16
    assert stream.count(tokenizer.eos_token_id) >= len(train_files) - 1
    assert ds.val.shape == (0, 16)


def test_special_token_text_in_files_stays_text(tmp_path, tokenizer):
    repo = make_repo(tmp_path / "repo", {"a.py": 'EOS = "<|endoftext|>"  # <fim_prefix>\n'})
    ds = build_dataset(repo, DataConfig(seq_len=4, val_fraction=0.0, cache_dir=""), tokenizer)
    ids = ds.train.flatten().tolist()
    fim = FimTokenIds.from_tokenizer(tokenizer)
    assert tokenizer.eos_token_id not in ids[:-3] and fim.prefix not in ids


def test_packing_efficiency_on_a_realistic_repo(tmp_path, tokenizer):
    repo = code_repo(tmp_path / "repo", n_files=80)
    ds = build_dataset(repo, DataConfig(seq_len=64, cache_dir=""), tokenizer)
    r = ds.report
    assert r.packing_efficiency >= 0.99
    assert r.train_blocks == ds.train.shape[0] > 100 and ds.train.shape[1] == 64
    assert r.val_blocks == ds.val.shape[0] >= 1 and ds.val.shape[1] == 64
    assert r.train_files + r.val_files == r.files_kept == 80
    assert r.tokens_dropped == r.train_tokens + r.val_tokens - ds.train.numel() - ds.val.numel()
    assert r.tokens_dropped < 2 * 64
    lines = r.format()
    assert any("packing efficiency" in line for line in lines) and any("80 kept" in line for line in lines)
    assert r.to_dict()["train_blocks"] == r.train_blocks


def test_small_validation_split_is_one_short_block(tmp_path, tokenizer):
    rng = random.Random(0)
    files = {f"m{i}.py": code_file(i, rng) for i in range(20)}
    repo = make_repo(tmp_path / "repo", files)
    cfg = DataConfig(seq_len=4096, val_fraction=0.05, cache_dir="")
    ds = build_dataset(repo, cfg, tokenizer)
    assert ds.val.shape[0] == 1 and 2 <= ds.val.shape[1] < 4096
    assert ds.report.val_tokens == ds.val.shape[1]


# --------------------------------------------------------------------------- cache


class TokenizeSpy:
    def __init__(self):
        self.calls = 0
        self.real = data_mod.tokenize_files

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.real(*args, **kwargs)


def test_cache_hit_skips_tokenizing_and_new_commit_invalidates(tmp_path, tokenizer, monkeypatch):
    repo = code_repo(tmp_path / "repo", n_files=12)
    cache = tmp_path / "cache"
    cfg = DataConfig(seq_len=32, fim_rate=0.5)
    spy = TokenizeSpy()
    monkeypatch.setattr(data_mod, "tokenize_files", spy)

    first = build_dataset(repo, cfg, tokenizer, cache_dir=cache)
    assert not first.report.cache_hit and spy.calls == 2  # train and validation
    assert len(list(cache.glob("packed-*.safetensors"))) == 1 and not list(cache.glob(".*tmp"))

    def no_collect(*args, **kwargs):
        raise AssertionError("a clean-tree cache hit must not read the files")

    monkeypatch.setattr(data_mod, "collect_and_split", no_collect)
    second = build_dataset(repo, cfg, tokenizer, cache_dir=cache)
    monkeypatch.undo()
    monkeypatch.setattr(data_mod, "tokenize_files", spy)
    assert second.report.cache_hit and spy.calls == 2
    assert torch.equal(first.train, second.train) and torch.equal(first.val, second.val)
    assert second.report.cache_key == first.report.cache_key
    assert {k: v for k, v in second.report.to_dict().items() if k not in ("cache_hit", "seconds")} == {
        k: v for k, v in first.report.to_dict().items() if k not in ("cache_hit", "seconds")
    }

    write(repo, {"pkg/new.py": "def new():\n    return 1\n"})
    commit_all(repo)
    third = build_dataset(repo, cfg, tokenizer, cache_dir=cache)
    assert not third.report.cache_hit and spy.calls == 4
    assert third.report.cache_key != first.report.cache_key
    assert build_dataset(repo, cfg, tokenizer, cache_dir=cache).report.cache_hit and spy.calls == 4


def test_config_and_tokenizer_changes_invalidate(tmp_path, tokenizer, monkeypatch):
    repo = code_repo(tmp_path / "repo", n_files=8)
    cache = tmp_path / "cache"
    spy = TokenizeSpy()
    monkeypatch.setattr(data_mod, "tokenize_files", spy)
    cfg = DataConfig(seq_len=32)
    keys = {build_dataset(repo, cfg, tokenizer, cache_dir=cache).report.cache_key}
    for changed in (DataConfig(seq_len=64), DataConfig(seq_len=32, fim_rate=0.3), DataConfig(seq_len=32, seed=9)):
        report = build_dataset(repo, changed, tokenizer, cache_dir=cache).report
        assert not report.cache_hit
        keys.add(report.cache_key)
    other = train_tokenizer(["completely different text\n"] * 5, 300)
    assert not build_dataset(repo, cfg, other, cache_dir=cache).report.cache_hit
    assert len(keys) == 4 and spy.calls == 2 * 5
    # the cache folder setting itself is not part of the key
    assert build_dataset(repo, DataConfig(seq_len=32, cache_dir="elsewhere"), tokenizer, cache_dir=cache).report.cache_hit


def test_uncommitted_edits_are_never_served_stale(tmp_path, tokenizer):
    repo = code_repo(tmp_path / "repo", n_files=8)
    cache = tmp_path / "cache"
    cfg = DataConfig(seq_len=16)
    clean = build_dataset(repo, cfg, tokenizer, cache_dir=cache)
    write(repo, {"pkg/mod_000.py": "edited = True\n" * 30})
    dirty = build_dataset(repo, cfg, tokenizer, cache_dir=cache)
    assert not dirty.report.cache_hit and dirty.report.dirty
    assert dirty.report.cache_key != clean.report.cache_key
    again = build_dataset(repo, cfg, tokenizer, cache_dir=cache)
    assert again.report.cache_hit and torch.equal(again.train, dirty.train)
    write(repo, {"pkg/mod_000.py": "edited = False\n" * 30})
    assert not build_dataset(repo, cfg, tokenizer, cache_dir=cache).report.cache_hit


def test_precollected_files_give_the_same_dataset(tmp_path, tokenizer, monkeypatch):
    repo = code_repo(tmp_path / "repo", n_files=8)
    cfg = DataConfig(seq_len=16, cache_dir="")
    collected = collect_and_split(repo, cfg)

    def no_collect(*args, **kwargs):
        raise AssertionError("collected files were passed in")

    monkeypatch.setattr(data_mod, "collect_and_split", no_collect)
    given = build_dataset(repo, cfg, tokenizer, collected=collected)
    monkeypatch.undo()
    assert torch.equal(given.train, build_dataset(repo, cfg, tokenizer).train)


def test_damaged_cache_file_is_rebuilt(tmp_path, tokenizer):
    repo = code_repo(tmp_path / "repo", n_files=6)
    cache = tmp_path / "cache"
    cfg = DataConfig(seq_len=16)
    first = build_dataset(repo, cfg, tokenizer, cache_dir=cache)
    (path,) = cache.glob("packed-*.safetensors")
    path.write_bytes(b"not a safetensors file")
    rebuilt = build_dataset(repo, cfg, tokenizer, cache_dir=cache)
    assert not rebuilt.report.cache_hit and torch.equal(rebuilt.train, first.train)
    assert build_dataset(repo, cfg, tokenizer, cache_dir=cache).report.cache_hit


def test_default_cache_dir_is_under_the_repo_root(tmp_path, tokenizer):
    repo = code_repo(tmp_path / "repo", n_files=4)
    build_dataset(repo, DataConfig(seq_len=16), tokenizer)
    assert len(list((repo / ".cache" / "data").glob("packed-*.safetensors"))) == 1


def test_tiny_tokenizer_is_trained_on_train_split_and_cached(tmp_path, monkeypatch):
    repo = code_repo(tmp_path / "repo", n_files=10)
    cache = tmp_path / "cache"
    cfg = DataConfig(seq_len=32)
    tok, collected, hit = prepare_tiny_tokenizer(repo, cfg, 500, cache_dir=cache)
    assert not hit and collected is not None
    trained_on_train = train_tokenizer([f.text for f in collected[0]], 500)
    assert tokenizer_fingerprint(tok) == tokenizer_fingerprint(trained_on_train)

    def no_training(*args, **kwargs):
        raise AssertionError("the cached tokenizer should be loaded")

    monkeypatch.setattr("starcoder_trainer.tokenizer.train_tokenizer", no_training)
    again, collected_again, hit = prepare_tiny_tokenizer(repo, cfg, 500, cache_dir=cache)
    assert hit and collected_again is None  # clean tree: nothing was read
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(tok)
    monkeypatch.undo()
    # the dataset built with the trained tokenizer is a cache hit for the loaded one
    first = build_dataset(repo, cfg, tok, cache_dir=cache, collected=collected)
    second = build_dataset(repo, cfg, again, cache_dir=cache)
    assert not first.report.cache_hit and second.report.cache_hit
    _, _, hit = prepare_tiny_tokenizer(repo, cfg, 600, cache_dir=cache)
    assert not hit


def test_tokenizer_batches_are_bounded_and_cover_everything():
    texts = ["a" * n for n in (5, 5, 5, 20, 1, 1, 1, 1)]
    batches = list(data_mod._batches(texts, max_items=3, max_chars=12))
    assert [len(b) for b in batches] == [2, 1, 1, 3, 1]
    assert [t for b in batches for t in b] == texts
    assert list(data_mod._batches([])) == []


def test_backend_fast_path_gives_the_same_ids_as_the_tokenizer_call(tokenizer):
    texts = [code_file(i, random.Random(i)) for i in range(6)] + ['s = "<|endoftext|><fim_middle>"\n', ""]
    slow = tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    tokenizer.backend_tokenizer.encode_special_tokens = False
    assert data_mod._encode(tokenizer, texts) == slow
    assert tokenizer.backend_tokenizer.encode_special_tokens is False  # restored

    class Wrapped:  # no backend_tokenizer: the plain tokenizer call is used
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, *args, **kwargs):
            return self.inner(*args, **kwargs)

    assert data_mod._encode(Wrapped(tokenizer), texts) == slow


def test_odd_file_names_and_broken_links(tmp_path, tokenizer):
    repo = make_repo(tmp_path / "repo", {"plain.py": "p = 1\n", "with space.py": "s = 2\n", "new\nline.py": "n = 3\n"})
    odd = os.fsdecode(b"caf\xe9.py")  # not UTF-8: git -z and os.fsdecode keep it as a surrogate escape
    (repo / odd).write_text("c = 4\n")
    os.symlink("loop.py", repo / "loop.py")  # a link to itself
    os.symlink("gone.py", repo / "dangling.py")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "odd names")
    selection = collect_files(repo, DataConfig())
    assert sorted(f.path for f in selection.kept) == sorted([odd, "new\nline.py", "plain.py", "with space.py"])
    assert selection.skipped["missing"] == 2 and selection.skipped["symlink_outside"] == 0
    (repo / odd).write_text("c = 5\n")  # dirty: the cache key hashes paths and contents
    ds = build_dataset(repo, DataConfig(seq_len=4, fim_rate=1.0), tokenizer, cache_dir=tmp_path / "cache")
    assert ds.report.dirty and ds.report.files_kept == 4 and ds.report.fim_files == 4


def test_unreadable_file_counts_as_missing(tmp_path, monkeypatch):
    repo = make_repo(tmp_path / "repo", {"a.py": "a = 1\n", "secret.py": "s = 1\n"})
    real_read = Path.read_bytes

    def read_bytes(self):  # chmod 000 would not stop root, so the permission error is injected
        if self.name == "secret.py":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    selection = collect_files(repo, DataConfig())
    assert [f.path for f in selection.kept] == ["a.py"] and selection.skipped["missing"] == 1
