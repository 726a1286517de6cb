"""The training recipe: read it top to bottom.

    recipe = Recipe(config, resume="auto")
    recipe.setup()          # device, attention, run folder, data, model, optimizer, state
    summary = recipe.train()
    recipe.cleanup()

One optimizer step = ``train.grad_accum_steps`` micro-batches of ``train.batch_size``
blocks each (split over the processes under torchrun); AdamW with a cosine schedule after a linear warm-up; the
global gradient norm clipped; autocast in the device's dtype (a GradScaler only for
float16). The step does no host work besides one finite-check per step and the
logging every ``train.log_every`` steps.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from starcoder_trainer import checkpoint as ckpt
from starcoder_trainer.config import Config
from starcoder_trainer.model import (
    apply_lora,
    build_model,
    count_parameters,
    load_tokenizer,
)

BASE_MODEL_DIR = "base-model"  # the preset's initial weights, saved once per LoRA run (the adapters' base)


class NonFiniteLossError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient norm."""


@dataclass
class Summary:
    """What a run did; ``format()`` is the end-of-run report."""

    run_dir: str
    device: str
    dtype: str
    attention: str
    start_step: int
    steps: int
    tokens: int
    train_seconds: float
    tokens_per_s: float
    peak_memory_bytes: int | None
    peak_memory_kind: str
    first_train_loss: float | None
    last_train_loss: float | None
    first_val_loss: float | None
    last_val_loss: float | None
    val_perplexity: float | None
    checkpoint: str | None
    stopped_by: str | None = None
    skipped_steps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def format(self) -> str:
        def f(x, spec=".4f"):
            return "n/a" if x is None else format(x, spec)

        mem = "n/a" if self.peak_memory_bytes is None else f"{self.peak_memory_bytes / 2**20:,.0f} MiB"
        lines = [
            f"run        {self.run_dir}",
            f"device     {self.device} ({self.dtype}, attention {self.attention})",
            f"steps      {self.start_step} -> {self.steps}"
            + (f" (stopped by {self.stopped_by})" if self.stopped_by else "")
            + (f", {self.skipped_steps} skipped (non-finite)" if self.skipped_steps else ""),
            f"speed      {self.tokens_per_s:,.0f} tokens/s ({self.tokens:,} tokens in {self.train_seconds:.1f} s)",
            f"memory     peak {mem} ({self.peak_memory_kind})",
            f"train loss {f(self.first_train_loss)} -> {f(self.last_train_loss)}",
            f"val loss   {f(self.first_val_loss)} -> {f(self.last_val_loss)} "
            + f"(perplexity {f(self.val_perplexity, '.2f')})",
            f"checkpoint {self.checkpoint or 'none'}",
        ]
        return "\n".join(lines)


class Recipe:
    """Fine-tune ``config.model`` on ``config.data`` per ``config.train``; write to ``config.output``."""

    def __init__(self, config: Config, *, resume: str | None = None, log: Callable[[str], None] = print):
        self.cfg = config
        self.resume = resume
        self._log = log
        self._stop_signal: str | None = None
        self._old_handlers: dict[int, Any] = {}

    # ------------------------------------------------------------------ setup

    def setup(self) -> Recipe:
        cfg = self.cfg
        t = cfg.train

        # 1. Device: the backend's choice (device, dtype, memory budget) and its reasons.
        import device_backend
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no per-file bars from save_pretrained/from_pretrained in the run log

        self.choice = device_backend.setup(cfg.device.request, memory_fraction=cfg.device.memory_fraction)
        self.device = torch.device(self.choice.device)

        # 2. Processes: rank and world from torchrun's environment (one process otherwise).
        from starcoder_trainer.distributed import init_distributed

        self.dist = init_distributed(t.strategy, self.choice.device_type)
        if self.dist.distributed:
            self.device = self.dist.device()  # cuda:<LOCAL_RANK> (init_distributed made it current)
        self.info(f"device: {self.device} ({self.choice.dtype}); " + "; ".join(map(str, self.choice.reasons)))

        # 3. Attention: "orchard" only where the bridge proved the kernel for training, else "sdpa".
        import orchard_bridge

        env = dict(os.environ)
        if cfg.repo.metal_backend != "metal-backend":  # the bridge looks in <root>/metal-backend by default
            env.setdefault("ORCHARD_REPO_PATH", str(cfg.path(cfg.repo.metal_backend)))
        self.bridge = orchard_bridge.enable(
            str(self.device),
            repo_root=cfg.root,
            library=cfg.path(cfg.orchard.library) if cfg.orchard.library else None,
            cache_dir=cfg.path(cfg.orchard.cache_dir),
            mode=cfg.orchard.mode,
            env=env,
        )
        self.attn_implementation = self.bridge.attn_implementation(training=True)
        if self.attn_implementation == "orchard":
            orchard_bridge.register_transformers()
        self.info(f"attention: {self.attn_implementation} ({self.bridge.reason})")

        # 4. Run folder and resume point: the newest checkpoint whose manifest verifies.
        output_dir = cfg.path(cfg.output.dir)
        point = ckpt.find_resume(self.resume, output_dir, cfg.output.run) if self.dist.is_main else None
        point = self.dist.broadcast_object(point)  # every rank resumes from rank 0's choice
        for note in point.skipped:
            self.info(f"resume: {note}")
        self.resume_from = point.path
        if self.resume and point.path is None:
            self.info(f"resume {self.resume}: no checkpoint found under {output_dir}; starting fresh")
        if point.path is not None:
            self.run_dir = point.run_dir
        else:
            name = cfg.output.run or time.strftime("run-%Y%m%d-%H%M%S", time.gmtime())
            name = self.dist.broadcast_object(name)
            self.run_dir = output_dir / name
            if ckpt.list_checkpoints(self.run_dir):
                raise ckpt.CheckpointError(
                    f"{self.run_dir} already holds checkpoints; continue it with --resume auto, "
                    "or pick another output.run"
                )
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.clean_temp(self.run_dir)
        self.info(f"run folder: {self.run_dir}" + (f" (resuming {point.path.name})" if point.path else ""))

        # 5. Data: tracked files -> tokenizer (trained for the preset, else the model's) -> packed blocks.
        from starcoder_trainer.data import (
            DataError,
            build_dataset,
            prepare_tiny_tokenizer,
        )

        cache_dir = cfg.path(cfg.data.cache_dir) if cfg.data.cache_dir else None
        collected = None
        if self.resume_from is not None:
            self.tokenizer = load_tokenizer(cfg, self.resume_from)
        elif cfg.model.is_preset:
            self.tokenizer, collected, hit = prepare_tiny_tokenizer(
                cfg.root, cfg.data, cfg.model.tiny.vocab_size, cache_dir=cache_dir
            )
            self.info(f"tokenizer: byte-level BPE, {len(self.tokenizer)} tokens ({'cached' if hit else 'trained'})")
        else:
            self.tokenizer = load_tokenizer(cfg, cfg.model.name)
        self.data = build_dataset(cfg.root, cfg.data, self.tokenizer, cache_dir=cache_dir, collected=collected)
        self.info("\n".join(self.data.report.format()))
        self.train_blocks = self.data.train
        self.val_blocks = self.data.val
        if len(self.train_blocks) == 0:
            raise DataError("data: the training split holds no block; add files (data.include) or lower data.seq_len")

        # 6. Model: fresh (preset / hub id / folder) or the checkpoint's weights; LoRA adapters on top.
        self.model = self._build_model()
        trainable, total = count_parameters(self.model)
        self.info(f"model: {cfg.model.name}, {total / 1e6:.2f} M parameters, {trainable / 1e6:.2f} M trainable")
        self._preflight_estimate()
        self.model.to(self.device)
        self.model.train()
        self.model = self.dist.wrap(self.model)

        # 7. Optimizer (decay on matrices only), schedule, grad scaler (float16 only).
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": t.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        self.optimizer = make_adamw(groups, lr=t.lr, betas=tuple(t.betas))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            functools.partial(lr_factor, warmup=t.warmup_steps, total=t.max_steps, min_ratio=t.min_lr_ratio),
        )
        self.scaler = torch.amp.GradScaler(self.device.type) if self.choice.use_grad_scaler else None
        self.dtype = self.choice.torch_dtype
        self.use_autocast = self.dtype != torch.float32

        # 8. Derived sizes, printed: blocks and tokens per optimizer step.
        # The global batch does not depend on the number of processes: each rank reads its
        # strided share of every micro-batch a single process would read.
        self.seq_len = self.train_blocks.shape[1]
        self.dist.per_rank_batch(t.batch_size)  # raises unless batch_size divides over the ranks
        self.global_blocks = t.batch_size * t.grad_accum_steps
        self.tokens_per_step = self.global_blocks * self.seq_len
        self.info(
            f"{len(self.train_blocks)} train / {len(self.val_blocks)} val blocks of {self.seq_len} tokens; "
            f"{self.tokens_per_step:,} tokens per step, {t.max_steps} steps"
        )

        # 9. Training state: step, optimizer, schedule, RNG from the checkpoint (or a seeded start).
        self.step = 0
        if self.resume_from is not None:
            state = ckpt.load_state(self.resume_from)
            self.dist.load_optimizer_state(self.model, self.optimizer, state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.scaler is not None and "scaler" in state:
                self.scaler.load_state_dict(state["scaler"])
            self.step = int(state["step"])
            self._history = state.get("history", {})
            self._restore_rng(state)
        else:
            torch.manual_seed(self.dist.rank_seed(t.seed))  # each rank its own dropout masks
            self._history = {}
        self.last_checkpoint: Path | None = self.resume_from
        self.metrics_path = self.run_dir / "metrics.jsonl"
        if self.dist.is_main:
            _truncate_metrics(self.metrics_path, self.step)
        return self

    def _restore_rng(self, state: dict) -> None:
        """This rank's random state from the checkpoint (rank 0: ``rng``; rank r: ``rng_ranks[r-1]``).

        A checkpoint written by another number of processes has no state for this rank:
        rank 0 continues the saved stream, the others start a distinct, reproducible one.
        """
        ckpt.set_rng_state(state["rng"])
        rank = self.dist.rank
        if rank == 0:
            return
        others = state.get("rng_ranks") or []
        if state.get("world_size") == self.dist.world_size and len(others) >= rank:
            ckpt.set_rng_state(others[rank - 1])
        else:
            torch.manual_seed(self.dist.rank_seed(self.cfg.train.seed + self.step))

    def _build_model(self):
        cfg = self.cfg
        attn = self.attn_implementation
        if not cfg.model.lora.enabled:
            return build_model(cfg, self.tokenizer, attn_implementation=attn, source=self.resume_from)
        base_dir = self.run_dir / BASE_MODEL_DIR
        if cfg.model.is_preset and base_dir.is_dir():
            base = build_model(cfg, self.tokenizer, attn_implementation=attn, source=base_dir)
        else:
            base = build_model(cfg, self.tokenizer, attn_implementation=attn)
            if cfg.model.is_preset and self.dist.is_main:
                base.save_pretrained(base_dir)
                self.tokenizer.save_pretrained(base_dir)
        model = apply_lora(cfg, base, adapter_from=self.resume_from)
        if cfg.model.is_preset:
            for peft_cfg in model.peft_config.values():
                peft_cfg.base_model_name_or_path = str(base_dir)
        return model

    def _preflight_estimate(self) -> None:
        """Memory estimate against the device budget before the first step (starcoder_trainer.estimate)."""
        from starcoder_trainer.estimate import preflight

        preflight(self.cfg, self.choice, log=self.info)

    # ------------------------------------------------------------------ the step

    def _loss_step(self, batch: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of one micro-batch (labels are the inputs, shifted inside)."""
        with torch.autocast(self.device.type, dtype=self.dtype) if self.use_autocast else nullcontext():
            return self.model(input_ids=batch, labels=batch).loss

    def _step_blocks(self, step: int) -> torch.Tensor:
        """[grad_accum_steps, rank batch] block indices this process reads at optimizer step ``step``.

        The order is a seeded permutation per epoch, so a step's blocks follow from the
        step number alone (resuming needs no replay).
        """
        n = len(self.train_blocks)
        start = step * self.global_blocks
        idx = torch.empty(self.global_blocks, dtype=torch.long)
        filled = 0
        while filled < self.global_blocks:
            epoch, offset = divmod(start + filled, n)
            take = min(n - offset, self.global_blocks - filled)
            idx[filled : filled + take] = self._epoch_order(epoch)[offset : offset + take]
            filled += take
        mine = self.dist.shard(self.cfg.train.batch_size)
        return idx.view(self.cfg.train.grad_accum_steps, self.cfg.train.batch_size)[:, mine.start : mine.stop : mine.step]

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if getattr(self, "_order_epoch", None) != epoch:
            g = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + epoch)
            self._order = torch.randperm(len(self.train_blocks), generator=g)
            self._order_epoch = epoch
        return self._order

    def train(self, *, stop_at: int | None = None) -> Summary:
        """Run optimizer steps up to ``train.max_steps`` (or ``stop_at``, checkpointing there, as a signal does)."""
        t = self.cfg.train
        start_step = self.step
        accum = t.grad_accum_steps
        clip = t.grad_clip if t.grad_clip > 0 else float("inf")
        bar = self._bar = self._progress(start_step)
        self._install_signal_handlers()
        loss_acc = torch.zeros((), device=self.device)
        acc_steps = 0
        bad_run = skipped = 0
        tokens = 0
        train_seconds = 0.0
        tick = time.perf_counter()
        try:
            if start_step == 0 and t.eval_every:
                self._evaluate_and_log(0)
            while self.step < t.max_steps:
                # -- one optimizer step: accumulate micro-batches, clip, check, update
                micro = self.train_blocks[self._step_blocks(self.step)].to(self.device, non_blocking=True)
                step_loss = torch.zeros((), device=self.device)
                for i, batch in enumerate(micro):
                    with self.dist.no_sync(self.model, sync=i == accum - 1):
                        loss = self._loss_step(batch) / accum
                        (self.scaler.scale(loss) if self.scaler else loss).backward()
                    step_loss += loss.detach()
                if self.scaler is not None:
                    self.scaler.unscale_(self.optimizer)
                grad_norm = self.dist.clip_grad_norm_(self.model, clip)  # the step's one host sync
                if self.scaler is not None:
                    finite = bool(torch.isfinite(step_loss))  # inf grads: the scaler skips and lowers its scale
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    finite = math.isfinite(grad_norm) and bool(torch.isfinite(step_loss))
                    if finite:
                        self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                self.step += 1
                tokens += self.tokens_per_step

                if finite:
                    bad_run = 0
                    loss_acc += step_loss
                    acc_steps += 1
                else:
                    bad_run += 1
                    skipped += 1
                    self.info(f"step {self.step}: non-finite loss or gradient norm; step skipped ({bad_run} in a row)")
                    if bad_run >= t.max_bad_steps:
                        raise NonFiniteLossError(
                            f"train: {bad_run} steps in a row had a non-finite loss or gradient norm "
                            f"(steps {self.step - bad_run + 1}..{self.step}); stopped. The last good checkpoint "
                            f"is intact: {self.last_checkpoint or 'none written yet'}. Lower train.lr, keep "
                            "train.grad_clip on, or use float32 (device.request: cpu) to find the cause"
                        )

                # -- logging, evaluation, checkpoint (host work only at these steps)
                is_last = self.step == t.max_steps
                if bar is not None:
                    bar.update(self.tokens_per_step)
                if (t.log_every and self.step % t.log_every == 0) or is_last:
                    now = time.perf_counter()
                    train_seconds += now - tick
                    if acc_steps:
                        mean_loss = self.dist.all_reduce_mean(float(loss_acc) / acc_steps)
                        self._log_train(mean_loss, grad_norm, tokens, train_seconds, bar)
                    loss_acc.zero_()
                    acc_steps = 0
                    tick = time.perf_counter()
                if (t.eval_every and self.step % t.eval_every == 0) or is_last:
                    train_seconds += time.perf_counter() - tick
                    self._evaluate_and_log(self.step)
                    tick = time.perf_counter()
                if (t.save_every and self.step % t.save_every == 0 and not bad_run) or is_last:
                    train_seconds += time.perf_counter() - tick
                    self.save()
                    tick = time.perf_counter()
                if stop_at is not None and self.step >= stop_at and not is_last:
                    self._stop_signal = self._stop_signal or f"stop_at={stop_at}"
                if self._stop_signal:
                    train_seconds += time.perf_counter() - tick
                    self.save()
                    tick = time.perf_counter()  # the clock after the loop adds from here
                    self.info(
                        f"stopped by {self._stop_signal} at step {self.step}; checkpoint {self.last_checkpoint}; "
                        "continue with --resume auto"
                    )
                    break
            train_seconds += time.perf_counter() - tick
        finally:
            if bar is not None:
                bar.close()
            self._bar = None
            self._restore_signal_handlers()
        return self._finish(start_step, tokens, train_seconds, skipped)

    # ------------------------------------------------------------------ evaluation, logging

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean validation loss over ``train.eval_batches`` micro-batches (this process's share)."""
        n = len(self.val_blocks)
        if n == 0:
            return None
        bs = self.cfg.train.batch_size
        starts = list(range(0, n, bs))
        if self.cfg.train.eval_batches:
            starts = starts[: self.cfg.train.eval_batches]
        world = self.dist.world_size
        if len(starts) >= world:  # the same number of batches on every rank (FSDP forwards are collective)
            starts = starts[: len(starts) - len(starts) % world]
            mine = [starts[i] for i in self.dist.shard(len(starts))]
        else:  # fewer batches than ranks: every rank evaluates all of them (the mean is unchanged)
            mine = starts
        self.model.eval()
        total = torch.zeros((), device=self.device)
        for s in mine:
            batch = self.val_blocks[s : s + bs].to(self.device, non_blocking=True)
            total += self._loss_step(batch).float()
        self.model.train()
        local = float(total) / max(len(mine), 1)
        return self.dist.all_reduce_mean(local)

    def _evaluate_and_log(self, step: int) -> None:
        val = self.evaluate()
        if val is None:
            return
        self._history.setdefault("first_val_loss", val)
        self._history["last_val_loss"] = val
        self._write_metrics({"step": step, "val_loss": val, "val_perplexity": _ppl(val)})
        self.info(f"step {step}: val loss {val:.4f} (perplexity {_ppl(val):.2f})")

    def _log_train(self, loss: float, grad_norm: float, tokens: int, seconds: float, bar) -> None:
        self._history.setdefault("first_train_loss", loss)
        self._history["last_train_loss"] = loss
        rate = tokens / seconds if seconds > 0 else 0.0
        lr = self.scheduler.get_last_lr()[0]
        self._write_metrics(
            {"step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": rate, "tokens": tokens}
        )
        if bar is not None:
            bar.set_postfix(step=self.step, loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
        elif self.dist.is_main and not self.cfg.train.progress:
            self.info(f"step {self.step}: loss {loss:.4f} lr {lr:.2e} {rate:,.0f} tokens/s")

    def _write_metrics(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _progress(self, start_step: int):
        if not (self.cfg.train.progress and self.dist.is_main):
            return None
        from tqdm.auto import tqdm

        total = self.cfg.train.max_steps * self.tokens_per_step
        return tqdm(
            total=total, initial=start_step * self.tokens_per_step, unit="tok", unit_scale=True, dynamic_ncols=True,
            desc="train",
        )

    def info(self, message: str) -> None:
        """Print on the main process only."""
        dist = getattr(self, "dist", None)
        if dist is None or dist.is_main:
            bar = getattr(self, "_bar", None)
            if bar is not None and self._log is print:
                bar.write(message)  # above the progress bar, not through it
            else:
                self._log(message)

    # ------------------------------------------------------------------ checkpoint

    def save(self) -> Path | None:
        """Write checkpoint-<step>: collective (every rank gathers its shard), the main process writes."""
        if self.last_checkpoint is not None and ckpt.step_of(self.last_checkpoint) == self.step:
            return self.last_checkpoint
        sharded = self.dist.distributed  # a full state dict gathered from every rank; one process saves directly
        model_state = self.dist.model_state_for_save(self.model) if sharded else None
        optimizer_state = self.dist.optimizer_state_for_save(self.model, self.optimizer)
        rng = self.dist.gather_object(ckpt.rng_state())  # every rank's stream, so N processes resume in N exactly
        if self.dist.is_main:
            state = {
                "step": self.step,
                "data_position": self.step * self.global_blocks,  # blocks consumed; the order is seeded per epoch
                "optimizer": optimizer_state,
                "scheduler": self.scheduler.state_dict(),
                "rng": rng[0],
                "history": dict(self._history),
                "world_size": self.dist.world_size,
            }
            if len(rng) > 1:
                state["rng_ranks"] = rng[1:]
            if self.scaler is not None:
                state["scaler"] = self.scaler.state_dict()
            self.last_checkpoint = ckpt.save_checkpoint(
                self.run_dir,
                self.step,
                model=self.dist.unwrap(self.model),
                model_state=model_state,
                tokenizer=self.tokenizer,
                state=state,
                config_yaml=self.cfg.to_yaml(),
                keep_last=self.cfg.train.keep_last,
            )
        self.last_checkpoint = self.dist.broadcast_object(self.last_checkpoint)
        return self.last_checkpoint

    # ------------------------------------------------------------------ end of run

    def _finish(self, start_step: int, tokens: int, seconds: float, skipped: int) -> Summary:
        h = self._history
        mem, kind = _peak_memory(self.device)
        last_val = h.get("last_val_loss")
        summary = Summary(
            run_dir=str(self.run_dir),
            device=str(self.device),
            dtype=self.choice.dtype,
            attention=self.attn_implementation,
            start_step=start_step,
            steps=self.step,
            tokens=tokens,
            train_seconds=seconds,
            tokens_per_s=tokens / seconds if seconds > 0 else 0.0,
            peak_memory_bytes=mem,
            peak_memory_kind=kind,
            first_train_loss=h.get("first_train_loss"),
            last_train_loss=h.get("last_train_loss"),
            first_val_loss=h.get("first_val_loss"),
            last_val_loss=last_val,
            val_perplexity=_ppl(last_val) if last_val is not None else None,
            checkpoint=str(self.last_checkpoint) if self.last_checkpoint else None,
            stopped_by=self._stop_signal,
            skipped_steps=skipped,
        )
        if self.dist.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary.to_dict(), indent=1), encoding="utf-8")
            if self.cfg.output.plot:
                plotted = plot_metrics(self.metrics_path, self.run_dir / "loss.png")
                if plotted:
                    summary.extra["plot"] = str(plotted)
            if self.cfg.model.lora.enabled and self.cfg.model.lora.merge_on_export and not self._stop_signal:
                summary.extra["merged"] = str(self.export_merged())
        return summary

    def export_merged(self) -> Path:
        """Base model with the final adapters merged in (``<run>/merged/``), loadable with AutoModelForCausalLM.

        Built from the last checkpoint on a fresh copy of the base, so the training model stays as it is.
        """
        from peft import PeftModel

        target = self.run_dir / "merged"
        base_dir = self.run_dir / BASE_MODEL_DIR
        source = base_dir if self.cfg.model.is_preset else None
        base = build_model(self.cfg, self.tokenizer, attn_implementation="sdpa", source=source)
        merged = PeftModel.from_pretrained(base, str(self.last_checkpoint)).merge_and_unload()
        merged.save_pretrained(target)
        self.tokenizer.save_pretrained(target)
        self.info(f"merged model: {target}")
        return target

    def cleanup(self) -> None:
        self._restore_signal_handlers()
        dist = getattr(self, "dist", None)
        if dist is not None:
            dist.close()

    # ------------------------------------------------------------------ signals

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, frame):
            name = signal.Signals(signum).name
            if self._stop_signal:  # a second signal: stop now
                raise KeyboardInterrupt(name)
            self._stop_signal = name
            self.info(f"\n{name}: finishing step {self.step + 1}, writing a checkpoint, then exiting")

        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[sig] = signal.signal(sig, handler)

    def _restore_signal_handlers(self) -> None:
        while self._old_handlers:
            sig, old = self._old_handlers.popitem()
            signal.signal(sig, old)


# --------------------------------------------------------------------------- helpers


def make_adamw(groups, **kwargs) -> torch.optim.AdamW:
    """AdamW with the fused kernel (one kernel for all parameters; CPU, CUDA and MPS), else the foreach one."""
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, ValueError, TypeError):  # a device or dtype the fused kernel does not support
        return torch.optim.AdamW(groups, **kwargs)


def lr_factor(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based): linear warm-up, then cosine to min_ratio.

    The first step already learns (factor 1/(warmup+1), not 0).
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _ppl(loss: float) -> float:
    return math.exp(min(loss, 50.0))


def _peak_memory(device: torch.device) -> tuple[int | None, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    if device.type == "mps":
        return torch.mps.driver_allocated_memory(), "torch.mps.driver_allocated_memory (at the end)"
    try:
        import resource
        import sys

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return (rss if sys.platform == "darwin" else rss * 1024), "process peak RSS"
    except ImportError:
        return None, "unavailable"


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop metric lines past the checkpoint's step (they will be written again)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except ValueError:
            continue
    path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_metrics(metrics_path: Path, out: Path) -> Path | None:
    """loss.png (train and validation loss by step) when matplotlib is installed; None otherwise."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train")
    if val:
        ax.plot(*zip(*val, strict=True), marker="o", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
