"""Process-group context for the training loop: one process, DDP or FSDP over torch.distributed.

The loop talks to torch.distributed only through ``DistContext``. With one process
every method is the identity (or a no-op), so the loop reads the same either way.

Launch several processes with torchrun (it sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT)::

    torchrun --standalone --nproc-per-node 2 -m starcoder_trainer
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 \\
        --rdzv-backend c10d --rdzv-endpoint HOST:29400 --rdzv-id JOB -m starcoder_trainer

How the loop uses it, in order:

1. ``ctx = init_distributed(strategy, device_type)`` before building anything.
2. ``model = ctx.wrap(model)`` after moving the model to its device and
   *before* creating the optimizer (FSDP replaces the parameters).
3. Data: ``ctx.shard(n)`` gives this rank's positions among ``n`` items, strided
   (``rank, rank + world, ...``). ``train.batch_size`` is the global micro-batch:
   each rank takes ``ctx.shard(batch_size)`` of every micro-batch a single process
   would read (``ctx.per_rank_batch`` checks it divides), so the global batch and
   the losses match one process. (Sharding the whole shuffled order and reading
   ``per_rank_batch`` blocks per micro-step gives the same batches.)
4. Each micro-step runs inside ``with ctx.no_sync(model, sync=is_last_micro_step):``
   so gradients are all-reduced once per optimizer step, not per micro-step.
5. Random stream per rank: ``torch.manual_seed(ctx.rank_seed(seed))`` after the model is
   built (the same init everywhere), so ranks draw different dropout masks; checkpoints
   keep every rank's RNG state (``gather_object``) so N processes resume exactly in N.
6. ``ctx.clip_grad_norm_(model, max_norm)`` (works for sharded gradients too),
   ``ctx.all_reduce_mean(loss)`` for the logged loss; only ``ctx.is_main`` logs.
7. Checkpoints (collective: every rank calls, rank 0 writes):
   ``ctx.model_state_for_save(model)`` and ``ctx.optimizer_state_for_save(model, opt)``
   return the same plain, unsharded dicts a single process writes
   (``model.state_dict()`` keys, ``optimizer.state_dict()`` layout) on rank 0
   and ``{}`` elsewhere, so a checkpoint written by N processes resumes in 1 and
   the other way round. Resume: every rank reads the files and calls
   ``ctx.load_model_state(model, sd)`` / ``ctx.load_optimizer_state(model, opt, osd)``.
8. ``ctx.close()`` at the end (also on error); a command-line process that ran
   collectives then ends with ``exit_process(code)`` (see there why).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any, NoReturn

STRATEGIES = ("none", "ddp", "fsdp")


class DistributedError(RuntimeError):
    """A multi-process setup that cannot work; the message says what to change."""


@dataclass
class DistContext:
    """Rank and world of this process; helpers the training loop calls."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    strategy: str = "none"  # "none" | "ddp" | "fsdp"
    device_type: str = "cpu"
    backend: str | None = None  # "gloo" | "nccl" when a process group exists
    owns_group: bool = False  # we created the process group, so close() destroys it
    _mesh: Any = field(default=None, repr=False)

    # ------------------------------------------------------------------ facts
    @property
    def is_main(self) -> bool:
        """Only the main process logs, writes metrics and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    def device(self):
        """The torch device of this rank (``cuda:<local_rank>`` on CUDA, else the device type)."""
        import torch

        if self.device_type == "cuda":
            return torch.device("cuda", self.local_rank)
        return torch.device(self.device_type)

    # ------------------------------------------------------------------ model
    def wrap(self, model):
        """Wrap the model for the strategy (identity in a single process).

        Call after the model is on its device and before creating the optimizer.
        """
        if not self.distributed or self.strategy == "none":
            return model
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.local_rank] if self.device_type == "cuda" else None
            return DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True)
        if self.strategy == "fsdp":
            return self._fully_shard(model)
        raise DistributedError(f"unknown strategy {self.strategy!r}; use one of {', '.join(STRATEGIES)}")

    def _fully_shard(self, model):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        if self._mesh is None:
            self._mesh = init_device_mesh(self.device_type, (self.world_size,))
        # Shard every transformer block on its own (so only one block is gathered
        # at a time), then the root, which keeps the embeddings and the tied head.
        block_names = set(getattr(model, "_no_split_modules", None) or [])
        blocks = [m for m in model.modules() if type(m).__name__ in block_names and m is not model]
        for block in blocks:
            fully_shard(block, mesh=self._mesh)
        fully_shard(model, mesh=self._mesh)
        return model

    def unwrap(self, model):
        """The plain model under any wrapper (for config and generation; save via model_state_for_save)."""
        return getattr(model, "module", model) if self.strategy == "ddp" and self.distributed else model

    def no_sync(self, model, sync: bool):
        """Context for one micro-step: gradients are all-reduced only when ``sync`` is true."""
        if not self.distributed:
            return contextlib.nullcontext()
        if self.strategy == "fsdp":
            model.set_requires_gradient_sync(sync)
            return contextlib.nullcontext()
        if self.strategy == "ddp" and not sync:
            return model.no_sync()
        return contextlib.nullcontext()

    def clip_grad_norm_(self, model, max_norm: float) -> float:
        """Clip the gradients of ``model`` in place; return the total norm before clipping as a float."""
        import torch

        params = [p for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        full = getattr(norm, "full_tensor", None)  # DTensor under FSDP
        return float(full() if full is not None else norm)

    # ------------------------------------------------------------------- data
    def shard(self, n_items: int) -> range:
        """Positions of the items this rank reads among ``n_items`` (strided, disjoint across ranks)."""
        return range(self.rank, n_items, self.world_size)

    def per_rank_batch(self, batch_size: int) -> int:
        """Micro-batch size per rank so that the global micro-batch equals ``batch_size``."""
        if batch_size % self.world_size:
            raise DistributedError(
                f"train.batch_size={batch_size} is not divisible by the {self.world_size} processes; "
                f"set train.batch_size to a multiple of {self.world_size} or change --nproc"
            )
        return batch_size // self.world_size

    # -------------------------------------------------------------- collectives
    def all_reduce_mean(self, value):
        """Mean of a float (or tensor) over ranks (identity in a single process)."""
        if not self.distributed:
            return value
        import torch
        import torch.distributed as dist

        is_tensor = isinstance(value, torch.Tensor)
        t = value.detach().clone() if is_tensor else torch.tensor(float(value), dtype=torch.float64)
        t = t.to(self.device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= self.world_size
        return t if is_tensor else float(t.item())

    def gather_object(self, obj) -> list | None:
        """Every rank's ``obj`` in rank order on rank 0, None elsewhere (``[obj]`` in a single process)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def rank_seed(self, seed: int) -> int:
        """The torch seed of this rank's random stream (dropout): ``seed`` on rank 0, a distinct one elsewhere.

        Every rank draws its own dropout masks; with one seed for all, the ranks would drop
        the same positions of their different samples (correlated noise). Rank 0 keeps
        ``seed``, so a single-process run is unchanged.
        """
        return seed + 1_000_003 * self.rank

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank (e.g. the checkpoint folder chosen by ``--resume auto``)."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device() if self.backend == "nccl" else None)
        return box[0]

    def barrier(self) -> None:
        """Wait for every rank (no-op in a single process)."""
        if self.distributed:
            import torch.distributed as dist

            if self.backend == "nccl":
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()

    def close(self) -> None:
        """Tear the process group down (no-op in a single process or when someone else owns it)."""
        if self.distributed and self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False

    # -------------------------------------------------------------- checkpoints
    def model_state_for_save(self, model) -> dict:
        """Full, unsharded model state dict (``model.state_dict()`` keys) on rank 0, ``{}`` elsewhere.

        Collective under FSDP: every rank must call it.
        """
        if not self.distributed or self.strategy != "fsdp":
            if not self.is_main:
                return {}
            return {k: v.detach().cpu() for k, v in self.unwrap(model).state_dict().items()}
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = get_model_state_dict(model, options=_full_options(cpu_offload=True))
        return state if self.is_main else {}

    def optimizer_state_for_save(self, model, optimizer) -> dict:
        """Full optimizer state in ``optimizer.state_dict()`` layout (integer ids) on rank 0, ``{}`` elsewhere.

        Collective under FSDP: every rank must call it.
        """
        if not self.distributed or self.strategy != "fsdp":
            return optimizer.state_dict() if self.is_main else {}
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        by_name = get_optimizer_state_dict(model, optimizer, options=_full_options(cpu_offload=True))
        if not self.is_main:
            return {}
        return _names_to_ids(by_name, _param_names(model, optimizer))

    def load_model_state(self, model, state: dict) -> None:
        """Load a full state dict (as written by ``model_state_for_save``) on every rank.

        Collective under FSDP: every rank calls it with the same full state.
        """
        if not self.distributed or self.strategy != "fsdp":
            self.unwrap(model).load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(model, state, options=_full_options())

    def load_optimizer_state(self, model, optimizer, state: dict) -> None:
        """Load an optimizer state in ``optimizer.state_dict()`` layout on every rank (collective under FSDP)."""
        if not self.distributed or self.strategy != "fsdp":
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        by_name = _ids_to_names(state, _param_names(model, optimizer))
        set_optimizer_state_dict(model, optimizer, by_name, options=_full_options())


def exit_process(code: int) -> NoReturn:
    """End a process that took part in a process group: flush, then exit without interpreter finalization.

    Why: a gloo worker thread (``pt_gloo_runloop``) frees each finished collective's work
    object *after* the caller's ``wait()`` has returned, and that frees tensors owned by
    Python, so the thread takes the GIL. ``destroy_process_group()`` does not stop these
    threads (DDP keeps the process group alive), so when the main thread is already in
    ``Py_FinalizeEx`` the thread is killed inside a destructor and the process aborts with
    "terminate called without an active exception" (SIGABRT) after a run that succeeded.
    Seen in CI on torch 2.13 (about 1 run in 30 under load; core dump: ``~AsyncBroadcastWork``
    -> ``decref_pyobject`` -> ``take_gil`` -> ``pthread_exit``). ``os._exit`` skips
    finalization; everything the run writes is closed by then, and the std streams and
    logging are flushed here first. Only for command-line entry points: a library caller
    keeps its own interpreter.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    os._exit(code)


def _full_options(cpu_offload: bool = False):
    """Options for a full (unsharded) state dict; with cpu_offload only rank 0 receives it, on the CPU."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload)


def _param_names(model, optimizer) -> list[list[str]]:
    """Parameter names per optimizer param group, in the optimizer's own order."""
    names = {id(p): n for n, p in model.named_parameters()}  # first name of a tied parameter, as DCP uses
    out = []
    for group in optimizer.param_groups:
        try:
            out.append([names[id(p)] for p in group["params"]])
        except KeyError as exc:
            raise DistributedError("the optimizer holds a parameter the model does not; create it after wrap()") from exc
    return out


def _names_to_ids(by_name: dict, names: list[list[str]]) -> dict:
    """FQN-keyed optimizer state (torch.distributed.checkpoint) -> ``optimizer.state_dict()`` layout."""
    state, groups, index = {}, [], 0
    for group, group_names in zip(by_name["param_groups"], names):
        ids = []
        for name in group_names:
            if name in by_name["state"]:
                state[index] = by_name["state"][name]
            ids.append(index)
            index += 1
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
    return {"state": state, "param_groups": groups}


def _ids_to_names(by_id: dict, names: list[list[str]]) -> dict:
    """``optimizer.state_dict()`` layout -> FQN-keyed optimizer state for set_optimizer_state_dict."""
    if len(by_id["param_groups"]) != len(names):
        raise DistributedError(
            f"the checkpoint's optimizer has {len(by_id['param_groups'])} parameter groups, this run's has "
            f"{len(names)}; resume with the same model and optimizer settings"
        )
    state, groups = {}, []
    for group, group_names in zip(by_id["param_groups"], names):
        if len(group["params"]) != len(group_names):
            raise DistributedError(
                "the checkpoint's optimizer covers a different set of parameters; resume with the same model"
            )
        for pid, name in zip(group["params"], group_names):
            if pid in by_id["state"]:
                state[name] = by_id["state"][pid]
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": list(group_names)})
    return {"state": state, "param_groups": groups}


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"environment variable {name}={raw!r} is not an integer (torchrun sets it)") from None


def init_distributed(strategy: str | None = None, device_type: str = "cpu") -> DistContext:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and set up the process group.

    ``strategy``: ``None``/"auto" (ddp with several processes), "none", "ddp" or "fsdp".
    One process gives the single-process frame whatever the strategy.
    Backend: gloo on CPU, nccl on CUDA; MPS supports one process only.
    """
    strategy = (strategy or "auto").lower()
    if strategy not in (*STRATEGIES, "auto"):
        raise DistributedError(f"train.strategy={strategy!r} is unknown; use auto, none, ddp or fsdp")
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world <= 1:
        return DistContext(device_type=device_type)
    if strategy == "none":
        raise DistributedError(
            f"{world} processes were launched but train.strategy is 'none'; set it to ddp or fsdp, "
            "or launch one process"
        )
    if strategy == "auto":
        strategy = "ddp"
    if device_type == "mps":
        raise DistributedError(
            f"MPS runs as a single process ({world} were launched): torch.distributed has no MPS backend. "
            "Run without --nproc / torchrun, or use device cpu for a multi-process CPU run"
        )
    if device_type not in ("cpu", "cuda"):
        raise DistributedError(f"distributed training supports cpu and cuda, not {device_type!r}")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise DistributedError(f"WORLD_SIZE={world} but {name} is not set; launch with torchrun")

    import torch
    import torch.distributed as dist

    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} CUDA devices; "
                "set --nproc-per-node to at most the number of GPUs"
            )
        torch.cuda.set_device(local_rank)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
        owns = True
    return DistContext(
        rank=rank,
        world_size=world,
        local_rank=local_rank,
        strategy=strategy,
        device_type=device_type,
        backend=backend,
        owns_group=owns,
    )
