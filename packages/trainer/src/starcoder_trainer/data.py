"""Data: a git repository's tracked files -> filtered text -> tokens -> packed blocks (cached).

Read top to bottom, the pipeline is:

1. ``collect_files``: ``git ls-files`` (so ``.gitignore`` holds), then filters, each
   skip counted by reason (``SKIP_REASONS``).
2. ``split_files``: train / validation by file, from a hash of (seed, path).
3. ``build_dataset``: tokenize each split in batches (optionally fill-in-the-middle),
   append ``<|endoftext|>`` after every file, cut the token stream into blocks of
   ``seq_len`` tokens, and cache the blocks keyed by what decides them.

``prepare_tiny_tokenizer`` trains (or loads from the cache) the tiny preset's
tokenizer on the training split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from starcoder_trainer.fim import FimTokenIds, join_fim, plan_fim

log = logging.getLogger(__name__)

#: Bumped whenever the cached files' layout or the packing rules change.
CACHE_FORMAT = 1

#: Why a tracked file was not used, in the order the checks run.
SKIP_REASONS: tuple[str, ...] = (
    "submodule",  # a gitlink (mode 160000): another repository's folder
    "excluded",  # include/exclude globs or extensions
    "symlink_outside",  # a symlink whose target lies outside data.repo
    "missing",  # listed by git but absent, unreadable or not a file in the working tree
    "too_large",  # larger than data.max_file_bytes
    "binary",  # NUL bytes, or not valid UTF-8
    "empty",  # nothing but whitespace
    "generated",  # a line longer than data.max_line_length (minified / generated)
    "duplicate",  # same content (sha256) as a file kept earlier in path order
)

DEFAULT_EXCLUDE: tuple[str, ...] = (
    # lock files: generated, long, and not code anyone writes
    "*.lock",
    "package-lock.json",
    "pnpm-lock.yaml",
    "npm-shrinkwrap.json",
    "go.sum",
    # minified bundles and source maps
    "*.min.js",
    "*.min.css",
    "*.map",
    # vendored third-party trees
    "node_modules/",
    "vendor/",
    "third_party/",
)

DEFAULT_EXTENSIONS: tuple[str, ...] = (
    # code
    ".py", ".pyi", ".pyx", ".ipynb", ".c", ".h", ".cc", ".cpp", ".cxx", ".hpp", ".hh", ".cu", ".cuh",
    ".m", ".mm", ".metal", ".swift", ".rs", ".go", ".java", ".kt", ".kts", ".scala", ".cs", ".rb",
    ".php", ".js", ".mjs", ".cjs", ".ts", ".tsx", ".jsx", ".vue", ".svelte", ".lua", ".r", ".jl",
    ".hs", ".ml", ".ex", ".exs", ".erl", ".clj", ".dart", ".zig", ".nim", ".sql", ".proto",
    ".sh", ".bash", ".zsh", ".fish", ".ps1", ".bat", ".cmake", ".mk", "makefile", "dockerfile",
    # markup, docs and config
    ".html", ".css", ".scss", ".md", ".rst", ".txt", ".tex", ".toml", ".yaml", ".yml", ".json",
    ".cfg", ".ini", ".xml",
)  # fmt: skip


class DataError(RuntimeError):
    """The data pipeline cannot go on; the message says what is wrong and how to fix it."""


# --------------------------------------------------------------------------- config


@dataclass
class DataConfig:
    """The ``data`` section of config.yaml: which files, how to split, tokenize and pack them."""

    repo: str = "."
    """Git repository (or a folder inside one) to train on; relative to the repo root."""
    include: list[str] = field(default_factory=list)
    """Glob patterns a file's path must match (gitignore-style; ``**`` crosses folders); empty = all."""
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    """Glob patterns of files to leave out (lock files, minified bundles, vendored folders)."""
    extensions: list[str] = field(default_factory=lambda: list(DEFAULT_EXTENSIONS))
    """Kept file-name endings, case-insensitive (".py", "Makefile"); empty = every file."""
    max_file_bytes: int = 1_000_000
    """Files larger than this many bytes are skipped as "too_large"."""
    max_line_length: int = 1000
    """A file with a longer line is skipped as "generated" (minified or machine-written)."""
    val_fraction: float = 0.1
    """Share of files held out for validation, 0 <= x < 1 (at least one file when > 0 and 2+ files)."""
    seed: int = 1234
    """Seed of the train/validation split and of the fill-in-the-middle choices."""
    seq_len: int = 256
    """Tokens per packed block (the model's training context)."""
    fim_rate: float = 0.0
    """Share of files turned into a fill-in-the-middle example, 0..1."""
    fim_spm_rate: float = 0.5
    """Of the FIM files, the share in suffix-prefix-middle order (the rest prefix-suffix-middle), 0..1."""
    cache_dir: str = ".cache/data"
    """Where packed datasets and the tiny tokenizer are cached; relative to the repo root; "" = no cache."""

    def validate(self) -> list[str]:
        """Every problem as ``"data.<field>: expected ..., got ..."``; an empty list when valid."""
        problems: list[str] = []

        def bad(name: str, expected: str) -> None:
            problems.append(f"data.{name}: expected {expected}, got {getattr(self, name)!r}")

        def is_int(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def is_number(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool)

        for name in ("repo", "cache_dir"):
            if not isinstance(getattr(self, name), str):
                bad(name, "a path string")
        if isinstance(self.repo, str) and not self.repo.strip():
            bad("repo", "a non-empty path (\".\" is the repo root)")
        for name in ("include", "exclude", "extensions"):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                bad(name, "a list of non-empty strings")
        for name, low in (("max_file_bytes", 1), ("max_line_length", 1), ("seq_len", 2)):
            if not is_int(getattr(self, name)) or getattr(self, name) < low:
                bad(name, f"an integer >= {low}")
        if not is_int(self.seed):
            bad("seed", "an integer")
        if not is_number(self.val_fraction) or not 0.0 <= self.val_fraction < 1.0:
            bad("val_fraction", "a number in [0, 1)")
        for name in ("fim_rate", "fim_spm_rate"):
            if not is_number(getattr(self, name)) or not 0.0 <= getattr(self, name) <= 1.0:
                bad(name, "a number in [0, 1]")
        return problems

    def key_fields(self) -> dict:
        """The fields that decide the data (all but ``cache_dir``), for cache keys."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "cache_dir"}


# --------------------------------------------------------------------------- collect


@dataclass(frozen=True)
class SourceFile:
    """One kept file: its path relative to ``data.repo`` (POSIX), its text, its content sha256."""

    path: str
    text: str
    sha256: str


@dataclass
class Selection:
    """The result of ``collect_files``: kept files in path order and skip counts per reason."""

    kept: list[SourceFile]
    skipped: dict[str, int]
    listed: int
    """How many entries ``git ls-files`` listed."""


def _git(repo: Path, *args: str) -> bytes:
    try:
        # --no-optional-locks: `git status` must not take index.lock while the user's own git runs
        done = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(repo), *args], capture_output=True, check=False
        )
    except FileNotFoundError as exc:
        raise DataError("git is not installed or not on PATH; the data pipeline lists files with git ls-files") from exc
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, ["git", *args], done.stdout, done.stderr)
    return done.stdout


def _ls_files(repo: Path) -> list[tuple[str, str]]:
    """(mode, path) of every tracked entry under ``repo``; paths relative to it."""
    if not repo.is_dir():
        raise DataError(
            f"data.repo: {repo} is not a folder; set data.repo to a git repository (relative to the repo root)"
        )
    try:
        out = _git(repo, "ls-files", "-s", "-z")
    except subprocess.CalledProcessError as exc:
        raise DataError(
            f"data.repo: {repo} is not inside a git repository ({exc.stderr.decode(errors='replace').strip()}); "
            "the data comes from `git ls-files`: run `git init && git add -A && git commit` there, "
            "or point data.repo at a repository"
        ) from None
    entries: dict[str, str] = {}  # path -> mode
    for record in out.split(b"\0"):
        if not record:
            continue
        meta, _, raw_path = record.partition(b"\t")
        entries.setdefault(os.fsdecode(raw_path), meta.split(b" ")[0].decode())  # merge conflicts list a path 3x
    return [(mode, path) for path, mode in entries.items()]


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A gitignore-style glob as a regex over POSIX paths.

    ``*`` and ``?`` stay within one folder, ``**`` crosses folders, ``[...]`` is a class;
    a pattern without a slash matches at any depth; a trailing slash means "this folder";
    a pattern that names a folder matches everything under it.
    """
    body = pattern.strip("/")
    anchored = "/" in body and not body.startswith("**/")
    out: list[str] = []
    i = 0
    while i < len(body):
        if body.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif body.startswith("**", i):
            out.append(".*")
            i += 2
        elif body[i] == "*":
            out.append("[^/]*")
            i += 1
        elif body[i] == "?":
            out.append("[^/]")
            i += 1
        elif body[i] == "[" and "]" in body[i + 2 :]:
            end = body.index("]", i + 2)
            inner = body[i + 1 : end]
            out.append("[" + ("^" + inner[1:] if inner.startswith("!") else inner).replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(body[i]))
            i += 1
    tail = "/.+" if pattern.endswith("/") else "(?:/.+)?"
    return re.compile(("" if anchored else "(?:.+/)?") + "".join(out) + tail)


class _Filter:
    """include / exclude / extensions as one predicate over relative POSIX paths."""

    def __init__(self, cfg: DataConfig):
        self.include = [_glob_regex(p) for p in cfg.include]
        self.exclude = [_glob_regex(p) for p in cfg.exclude]
        self.extensions = tuple(e.lower() for e in cfg.extensions)

    def keeps(self, path: str) -> bool:
        if self.include and not any(r.fullmatch(path) for r in self.include):
            return False
        if any(r.fullmatch(path) for r in self.exclude):
            return False
        return not self.extensions or path.rsplit("/", 1)[-1].lower().endswith(self.extensions)


def _inside(path: Path, root: Path) -> bool:
    """Whether the symlink ``path`` resolves to somewhere under ``root``."""
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a link loop (RuntimeError before Python 3.13): counted as "missing" next
        return True


def _longest_line(text: str) -> int:
    return max(map(len, text.split("\n")), default=0)


def collect_files(repo: Path, cfg: DataConfig) -> Selection:
    """List ``repo``'s tracked files with git and keep the usable ones (see ``SKIP_REASONS``).

    ``repo`` is the already resolved ``data.repo`` folder. Raises ``DataError`` when it
    is not in a git repository or when no file is left, naming the filters.
    """
    repo = Path(repo)
    root = repo.resolve()
    listed = _ls_files(repo)
    wanted = _Filter(cfg)
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    kept: list[SourceFile] = []
    seen: set[str] = set()
    for mode, path in listed:
        reason = None
        full = repo / path
        if mode == "160000":
            reason = "submodule"
        elif not wanted.keeps(path):
            reason = "excluded"
        elif mode == "120000" and not _inside(full, root):
            reason = "symlink_outside"
        elif not full.is_file():
            reason = "missing"
        elif full.stat().st_size > cfg.max_file_bytes:
            reason = "too_large"
        if reason is None:
            try:
                data = full.read_bytes()
            except OSError:
                skipped["missing"] += 1
                continue
            try:
                text = None if b"\0" in data else data.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            digest = hashlib.sha256(data).hexdigest()
            if text is None:
                reason = "binary"
            elif not text.strip():
                reason = "empty"
            elif _longest_line(text) > cfg.max_line_length:
                reason = "generated"
            elif digest in seen:
                reason = "duplicate"
            else:
                seen.add(digest)
                kept.append(SourceFile(path=path, text=text, sha256=digest))
                continue
        skipped[reason] += 1
    if not kept:
        counts = ", ".join(f"{k}={v}" for k, v in skipped.items() if v) or "git ls-files listed nothing"
        raise DataError(
            f"no usable files in {repo} ({len(listed)} tracked; skipped: {counts}). Filters: "
            f"data.include={cfg.include}, data.exclude={cfg.exclude}, data.extensions={cfg.extensions}, "
            f"data.max_file_bytes={cfg.max_file_bytes}, data.max_line_length={cfg.max_line_length}. "
            "Fix: commit (or `git add`) some text files there, or loosen these filters in config.yaml "
            "(e.g. --set data.extensions=[] to accept every extension)"
        )
    return Selection(kept=kept, skipped=skipped, listed=len(listed))


# --------------------------------------------------------------------------- split


def _split_score(path: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{path}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_files(
    files: Sequence[SourceFile], val_fraction: float, seed: int
) -> tuple[list[SourceFile], list[SourceFile]]:
    """Split by file: a file goes to validation when hash(seed, path) < ``val_fraction``.

    A file's side depends only on its path and the seed, so adding files does not move
    others. With ``val_fraction > 0`` and at least 2 files, each side gets at least one
    file (the lowest-scoring file moves to validation, or the highest to train).
    Both lists keep the input order.
    """
    scores = {f.path: _split_score(f.path, seed) for f in files}
    val_paths = {p for p, s in scores.items() if s < val_fraction}
    if val_fraction > 0 and len(files) >= 2:
        if not val_paths:
            val_paths = {min(scores, key=scores.__getitem__)}
        elif len(val_paths) == len(files):
            val_paths.discard(max(scores, key=scores.__getitem__))
    train = [f for f in files if f.path not in val_paths]
    val = [f for f in files if f.path in val_paths]
    return train, val


def resolve_data_repo(repo_root: Path, cfg: DataConfig) -> Path:
    """``data.repo`` resolved against the repo root (``~`` expanded, absolute kept)."""
    from device_backend.paths import resolve_path

    return resolve_path(repo_root, cfg.repo)


Collected = tuple[list[SourceFile], list[SourceFile], Selection]


def collect_and_split(repo_root: Path, cfg: DataConfig) -> Collected:
    """``collect_files`` on ``data.repo`` then ``split_files``: (train files, val files, selection)."""
    selection = collect_files(resolve_data_repo(repo_root, cfg), cfg)
    train, val = split_files(selection.kept, cfg.val_fraction, cfg.seed)
    return train, val, selection


# --------------------------------------------------------------------------- cache keys


@dataclass(frozen=True)
class SourceState:
    """What the working tree holds: HEAD commit and whether tracked files differ from it."""

    head: str | None
    dirty: bool

    @property
    def clean(self) -> bool:
        return self.head is not None and not self.dirty


def source_state(repo: Path) -> SourceState:
    """HEAD and dirtiness of tracked files under ``repo`` (submodules ignored: they are skipped)."""
    try:
        head = _git(repo, "rev-parse", "--verify", "-q", "HEAD").decode().strip() or None
    except subprocess.CalledProcessError:
        head = None  # no commit yet
    try:
        status = _git(repo, "status", "--porcelain", "--untracked-files=no", "--ignore-submodules=all", "--", ".")
    except subprocess.CalledProcessError:
        return SourceState(head=head, dirty=True)
    return SourceState(head=head, dirty=bool(status.strip()))


def _content_digest(train: Sequence[SourceFile], val: Sequence[SourceFile]) -> str:
    digest = hashlib.sha256()
    for side, files in (("train", train), ("val", val)):
        for f in files:
            digest.update(f"{side}\0{f.path}\0{f.sha256}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _key(kind: str, source: dict, cfg: DataConfig, extra: dict) -> str:
    payload = {"format": CACHE_FORMAT, "kind": kind, "source": source, "data": cfg.key_fields(), **extra}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _source_for_key(state: SourceState, collected: Collected | None) -> dict | None:
    """HEAD alone when the tree is clean, else the content of the selected files (needs them)."""
    if state.clean:
        return {"head": state.head}
    if collected is None:
        return None
    return {"files": _content_digest(collected[0], collected[1])}


def _cache_root(repo_root: Path, cfg: DataConfig, cache_dir: Path | None) -> Path | None:
    if cache_dir is not None:
        return Path(cache_dir)
    if not cfg.cache_dir:
        return None
    from device_backend.paths import resolve_path

    return resolve_path(repo_root, cfg.cache_dir)


# --------------------------------------------------------------------------- tokenize and pack


@dataclass
class DataReport:
    """What ``build_dataset`` did: files, tokens, blocks, and whether the cache answered."""

    repo: str
    head: str | None
    dirty: bool
    files_listed: int
    files_kept: int
    skipped: dict[str, int]
    train_files: int
    val_files: int
    fim_files: int
    train_tokens: int
    val_tokens: int
    train_blocks: int
    val_blocks: int
    seq_len: int
    tokens_dropped: int
    """Tokens of each split's final partial block, which are dropped (blocks hold no padding)."""
    packing_efficiency: float
    """Tokens that landed in blocks / tokens produced (blocks are all real tokens, no padding)."""
    cache_hit: bool = False
    cache_key: str = ""
    seconds: float = 0.0
    """Wall time of collecting, tokenizing and packing (of loading, on a cache hit)."""

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> list[str]:
        """Human-readable lines for the console and the run log."""
        skipped = ", ".join(f"{k} {v}" for k, v in self.skipped.items() if v) or "none"
        state = (self.head or "no commit")[:12] + (" + uncommitted changes" if self.dirty else "")
        return [
            f"data: {self.repo} @ {state}",
            f"  files: {self.files_listed} tracked, {self.files_kept} kept; skipped: {skipped}",
            f"  split: {self.train_files} train / {self.val_files} validation files"
            + (f"; {self.fim_files} fill-in-the-middle" if self.fim_files else ""),
            f"  tokens: {self.train_tokens:,} train / {self.val_tokens:,} validation",
            (
                f"  blocks of {self.seq_len}: {self.train_blocks} train / {self.val_blocks} validation; "
                f"packing efficiency {self.packing_efficiency:.2%} ({self.tokens_dropped} tail tokens dropped)"
            ),
            f"  cache: {'hit' if self.cache_hit else 'built'} ({self.cache_key[:12]}) in {self.seconds:.2f} s",
        ]


@dataclass
class PackedDataset:
    """Token blocks ready for the loop: ``train`` and ``val`` are int64 [n_blocks, block_len]."""

    train: object  # torch.LongTensor
    val: object  # torch.LongTensor
    report: DataReport


def _batches(texts: list[str], max_items: int = 1024, max_chars: int = 16_000_000):
    """Consecutive slices of ``texts`` bounded in count and characters (memory stays flat)."""
    start, chars = 0, 0
    for i, text in enumerate(texts):
        if i > start and (i - start >= max_items or chars + len(text) > max_chars):
            yield texts[start:i]
            start, chars = i, 0
        chars += len(text)
    if start < len(texts):
        yield texts[start:]


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, in batches; special-token text in source files stays plain text.

    A fast tokenizer is driven through its Rust backend's ``encode_batch_fast`` (no
    character offsets: about a third less work than ``tokenizer(texts)``, same ids)
    when the backend has no truncation or padding of its own; anything else goes
    through ``tokenizer(texts)``.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    direct = (
        backend is not None
        and hasattr(backend, "encode_batch_fast")
        and backend.truncation is None
        and backend.padding is None
    )
    ids: list[list[int]] = []
    if direct:
        previous = backend.encode_special_tokens
        backend.encode_special_tokens = True  # "<|endoftext|>" written in a file is text, not the eos token
        try:
            for batch in _batches(texts):
                ids.extend(e.ids for e in backend.encode_batch_fast(batch, add_special_tokens=False))
        finally:
            backend.encode_special_tokens = previous
        return ids
    for batch in _batches(texts):
        encoded = tokenizer(
            batch, add_special_tokens=False, split_special_tokens=True, return_attention_mask=False, verbose=False
        )
        ids.extend(encoded["input_ids"])
    return ids


def tokenize_files(files: Sequence[SourceFile], tokenizer, cfg: DataConfig) -> tuple[list[list[int]], int]:
    """Each file's token ids followed by eos (FIM-transformed for a seeded share); and the FIM count."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no eos token; packing needs one between files (set tokenizer.eos_token)")
    plans = [plan_fim(f.text, f.path, cfg.seed, cfg.fim_rate, cfg.fim_spm_rate) for f in files]
    fim_ids = FimTokenIds.from_tokenizer(tokenizer) if any(plans) else None
    pieces: list[str] = []
    for f, plan in zip(files, plans, strict=True):
        pieces.extend([f.text] if plan is None else plan.split(f.text))
    encoded = iter(_encode(tokenizer, pieces))
    docs: list[list[int]] = []
    for plan in plans:
        if plan is None:
            doc = next(encoded)
        else:
            prefix, middle, suffix = next(encoded), next(encoded), next(encoded)
            doc = join_fim(prefix, middle, suffix, fim_ids, plan.spm)
        docs.append([*doc, eos])
    return docs, sum(p is not None for p in plans)


def pack(docs: Sequence[Sequence[int]], seq_len: int):
    """Concatenate the documents and cut the stream into [n, seq_len] int64 blocks.

    The final partial block is dropped. A stream shorter than one block (a small
    validation split) becomes a single shorter block [1, n_tokens] rather than
    nothing, when it holds at least 2 tokens. Returns (blocks, n_tokens).
    """
    import itertools

    import numpy as np
    import torch

    total = sum(len(doc) for doc in docs)
    stream = torch.from_numpy(np.fromiter(itertools.chain.from_iterable(docs), dtype=np.int64, count=total))
    n_tokens = stream.numel()
    n_blocks = n_tokens // seq_len
    if n_blocks:
        return stream[: n_blocks * seq_len].view(n_blocks, seq_len).clone(), n_tokens
    if n_tokens >= 2:
        return stream.view(1, n_tokens), n_tokens
    return torch.empty((0, seq_len), dtype=torch.long), n_tokens


def _load_cached(path: Path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as handle:
        report = json.loads(handle.metadata()["report"])
    tensors = load_file(str(path))
    return tensors["train"], tensors["val"], report


def _save_cached(path: Path, train, val, report: DataReport) -> None:
    """Write to a temporary file in the same folder and rename it: readers never see half a file."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        save_file({"train": train.contiguous(), "val": val.contiguous()}, str(tmp),
                  metadata={"report": json.dumps(report.to_dict())})  # fmt: skip
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def build_dataset(
    repo_root: Path,
    cfg: DataConfig,
    tokenizer,
    *,
    cache_dir: Path | None = None,
    collected: Collected | None = None,
) -> PackedDataset:
    """Packed train/validation blocks of ``data.repo`` for ``tokenizer``, from the cache when possible.

    The cache key is (source, data config without cache_dir, tokenizer fingerprint,
    format version), where the source is the HEAD commit when the tracked files are
    clean, else a hash of the selected files' paths and contents (so uncommitted
    edits are never served stale). On a clean tree a cache hit needs neither reading
    files nor tokenizing. ``collected`` (from ``collect_and_split(repo_root, cfg)``
    with the same cfg) saves collecting the files again. ``cache_dir`` overrides
    ``data.cache_dir``.
    """
    from safetensors import SafetensorError

    from starcoder_trainer.tokenizer import tokenizer_fingerprint

    started = time.perf_counter()
    repo = resolve_data_repo(repo_root, cfg)
    state = source_state(repo)
    root = _cache_root(repo_root, cfg, cache_dir)
    extra = {"tokenizer": tokenizer_fingerprint(tokenizer)}

    def cached(source: dict | None) -> tuple[str, PackedDataset | None]:
        if source is None:
            return "", None
        key = _key("packed", source, cfg, extra)
        path = root / f"packed-{key}.safetensors" if root is not None else None
        if path is None or not path.is_file():
            return key, None
        try:
            train, val, report = _load_cached(path)
            report.update(cache_hit=True, cache_key=key, seconds=time.perf_counter() - started)
            report = DataReport(**report)
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:  # damaged: rebuild it
            log.warning("data cache %s unreadable (%s); rebuilding it", path, exc)
            return key, None
        return key, PackedDataset(train=train, val=val, report=report)

    key, hit = cached(_source_for_key(state, None))
    if hit is not None:
        return hit
    if collected is None:
        collected = collect_and_split(repo_root, cfg)
    train_files, val_files, selection = collected
    if not key:
        key, hit = cached(_source_for_key(state, collected))
        if hit is not None:
            return hit

    train_docs, train_fim = tokenize_files(train_files, tokenizer, cfg)
    val_docs, val_fim = tokenize_files(val_files, tokenizer, cfg)
    train, train_tokens = pack(train_docs, cfg.seq_len)
    val, val_tokens = pack(val_docs, cfg.seq_len)
    in_blocks = train.numel() + val.numel()
    total = train_tokens + val_tokens
    report = DataReport(
        repo=cfg.repo,
        head=state.head,
        dirty=state.dirty,
        files_listed=selection.listed,
        files_kept=len(selection.kept),
        skipped=dict(selection.skipped),
        train_files=len(train_files),
        val_files=len(val_files),
        fim_files=train_fim + val_fim,
        train_tokens=train_tokens,
        val_tokens=val_tokens,
        train_blocks=train.shape[0],
        val_blocks=val.shape[0],
        seq_len=cfg.seq_len,
        tokens_dropped=total - in_blocks,
        packing_efficiency=in_blocks / total if total else 0.0,
        cache_hit=False,
        cache_key=key,
    )
    report.seconds = time.perf_counter() - started
    if root is not None:
        try:
            _save_cached(root / f"packed-{key}.safetensors", train, val, report)
        except OSError as exc:  # a read-only cache folder slows the next run, it does not stop this one
            log.warning("could not write the data cache under %s (%s); set data.cache_dir to a writable folder",
                        root, exc)  # fmt: skip
    return PackedDataset(train=train, val=val, report=report)


# --------------------------------------------------------------------------- tiny tokenizer


def prepare_tiny_tokenizer(
    repo_root: Path,
    cfg: DataConfig,
    vocab_size: int,
    *,
    cache_dir: Path | None = None,
    collected: Collected | None = None,
):
    """The tiny preset's tokenizer: trained on the training split, or loaded from the cache.

    Keyed like the dataset cache (source, data config, vocab size, tokenizers version).
    Returns ``(tokenizer, collected, cache_hit)``; pass ``collected`` on to
    ``build_dataset`` so the files are read once (it is None on a cache hit with a
    clean tree, where nothing was read).
    """
    import tokenizers
    from transformers import AutoTokenizer

    from starcoder_trainer.tokenizer import train_tokenizer

    repo = resolve_data_repo(repo_root, cfg)
    state = source_state(repo)
    root = _cache_root(repo_root, cfg, cache_dir)
    extra = {"vocab_size": vocab_size, "tokenizers": tokenizers.__version__}
    source = _source_for_key(state, collected)
    if source is None:
        collected = collect_and_split(repo_root, cfg)
        source = _source_for_key(state, collected)
    folder = root / f"tokenizer-{_key('tokenizer', source, cfg, extra)}" if root is not None else None
    if folder is not None and (folder / "tokenizer.json").is_file():
        try:
            return AutoTokenizer.from_pretrained(str(folder)), collected, True
        except (OSError, ValueError, KeyError) as exc:
            log.warning("cached tokenizer %s unreadable (%s); training it again", folder, exc)
    if collected is None:
        collected = collect_and_split(repo_root, cfg)
    tokenizer = train_tokenizer((f.text for f in collected[0]), vocab_size)
    if folder is not None:
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            tokenizer.save_pretrained(str(tmp))
            os.replace(tmp, folder)  # fails if another process got there first: same key, same content
        except OSError as exc:
            if not folder.is_dir():
                log.warning("could not cache the tokenizer under %s (%s)", folder, exc)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer, collected, False
