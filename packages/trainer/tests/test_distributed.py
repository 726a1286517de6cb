"""DistContext: the single-process frame, torchrun's environment, and real 2-process runs (gloo, CPU).

The multi-process tests launch ``test_distributed_worker.py`` (a minimal loop over
DistContext on a tiny GPTBigCode) with torchrun and compare with one process:

- DDP: parameters bitwise identical across ranks; losses within LOSS_TOL of the
  single-process run with the same global batch; its checkpoint has the single-process layout.
- FSDP (FSDP2 fully_shard): same loss check; its gathered checkpoint has the single-process
  keys and layout, and a single-process checkpoint resumes under FSDP.
(test_distributed_cli.py resumes 2-process checkpoints of the real CLI in one process.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from starcoder_trainer import distributed as D
from starcoder_trainer.distributed import DistContext, DistributedError, init_distributed

WORKER = Path(__file__).with_name("test_distributed_worker.py")
# Float sums in another order (per-rank micro-batches, all-reduce) move the loss by ~1e-7.
LOSS_TOL = 1e-5
# AdamW divides by sqrt(v): those 1e-7 differences reach ~1e-5 in the weights after 4 steps at lr 3e-3.
PARAM_TOL = 1e-4
SPEC = {"steps": 4, "batch": 4, "accum": 2, "save_at": 2}
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")


def _run(tmp: Path, nproc: int, **spec) -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "spec.json").write_text(json.dumps({**SPEC, **spec, "out": str(tmp)}))
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env.update(OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error")
    if nproc == 1:
        cmd = [sys.executable, str(WORKER), str(tmp / "spec.json")]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        cmd += [str(WORKER), str(tmp / "spec.json")]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads((tmp / "losses.json").read_text())


def _assert_close(a: list[float], b: list[float]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert abs(x - y) <= LOSS_TOL * max(1.0, abs(y)), (a, b)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("single")
    return out, _run(out, 1)


# ------------------------------------------------------------------ one process


def test_single_process_frame_is_the_identity(monkeypatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    ctx = init_distributed("fsdp", "cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    model = torch.nn.Linear(3, 2)
    assert ctx.wrap(model) is model and ctx.unwrap(model) is model
    assert ctx.shard(5) == range(5)
    assert ctx.per_rank_batch(3) == 3
    assert ctx.all_reduce_mean(2.5) == 2.5
    with ctx.no_sync(model, sync=False):
        pass
    state = ctx.model_state_for_save(model)
    assert set(state) == {"weight", "bias"}
    opt = torch.optim.AdamW(model.parameters())
    assert ctx.optimizer_state_for_save(model, opt) == opt.state_dict()
    assert ctx.gather_object({"a": 1}) == [{"a": 1}]
    assert ctx.rank_seed(5) == 5  # a single process keeps the configured seed
    ctx.barrier()
    ctx.close()


def test_each_rank_restores_its_own_random_stream():
    """Rank r takes rng_ranks[r-1] from a checkpoint of as many processes, else a distinct derived seed."""
    from types import SimpleNamespace

    from starcoder_trainer import checkpoint as ckpt
    from starcoder_trainer.recipe import Recipe

    def snapshot(seed):
        torch.manual_seed(seed)
        return ckpt.rng_state()

    seeds = [DistContext(rank=r, world_size=3).rank_seed(7) for r in range(3)]
    assert len(set(seeds)) == 3
    state = {"rng": snapshot(1), "rng_ranks": [snapshot(2), snapshot(3)], "world_size": 3}

    def restored(rank, world):
        fake = SimpleNamespace(dist=DistContext(rank=rank, world_size=world), cfg=SimpleNamespace(
            train=SimpleNamespace(seed=7)), step=4)
        torch.manual_seed(99)
        Recipe._restore_rng(fake, state)
        return torch.get_rng_state()

    assert torch.equal(restored(0, 3), state["rng"]["torch_cpu"])
    assert torch.equal(restored(2, 3), state["rng_ranks"][1]["torch_cpu"])
    assert torch.equal(restored(0, 2), state["rng"]["torch_cpu"])  # rank 0 continues in any world size
    torch.manual_seed(DistContext(rank=1, world_size=2).rank_seed(7 + 4))
    assert torch.equal(restored(1, 2), torch.get_rng_state())  # written by 3 processes, resumed in 2


def test_shards_are_disjoint_and_rebuild_the_single_process_batches():
    order = list(range(48))
    batch = 6
    for world in (1, 2, 3):
        ctxs = [DistContext(rank=r, world_size=world) for r in range(world)]
        shards = [[order[i] for i in c.shard(len(order))] for c in ctxs]
        assert sorted(x for s in shards for x in s) == order
        per_rank = ctxs[0].per_rank_batch(batch)
        for j in range(len(order) // batch):
            union = sorted(x for s in shards for x in s[j * per_rank : (j + 1) * per_rank])
            assert union == order[j * batch : (j + 1) * batch]


def test_batch_not_divisible_by_world_names_the_fix():
    with pytest.raises(DistributedError, match="multiple of 4"):
        DistContext(rank=0, world_size=4).per_rank_batch(6)


@pytest.mark.parametrize(
    ("env", "strategy", "device", "match"),
    [
        ({"WORLD_SIZE": "2"}, None, "mps", "MPS runs as a single process"),
        ({"WORLD_SIZE": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1"}, "none", "cpu", "strategy is 'none'"),
        ({"WORLD_SIZE": "2"}, "ddp", "cpu", "MASTER_ADDR is not set"),
        ({"WORLD_SIZE": "two"}, "ddp", "cpu", "not an integer"),
        ({}, "zero3", "cpu", "unknown"),
    ],
)
def test_bad_launches_are_refused_with_a_reason(monkeypatch, env, strategy, device, match):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(DistributedError, match=match):
        init_distributed(strategy, device)


def test_optimizer_state_layout_converts_both_ways():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.AdamW([{"params": decay}, {"params": rest, "weight_decay": 0.0}])
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    plain = opt.state_dict()
    names = D._param_names(model, opt)
    by_name = D._ids_to_names(plain, names)
    assert set(by_name["state"]) == {"0.weight", "2.weight", "0.bias", "2.bias"}
    back = D._names_to_ids(by_name, names)
    assert back["param_groups"] == plain["param_groups"]
    for k, v in plain["state"].items():
        assert all(torch.equal(v[s], back["state"][k][s]) for s in v)
    with pytest.raises(DistributedError, match="parameter groups"):
        D._ids_to_names(plain, names[:1])


def test_exit_process_flushes_output_and_skips_interpreter_finalization(tmp_path):
    """What the CLI relies on after collectives: buffered output arrives, the code passes, no finalization runs."""
    script = tmp_path / "child.py"
    script.write_text(
        "import atexit, logging, sys\n"
        "from starcoder_trainer.distributed import exit_process\n"
        "atexit.register(lambda: print('finalized', file=sys.stderr))\n"
        "handler = logging.FileHandler(sys.argv[1])\n"
        "logging.getLogger('t').addHandler(handler)\n"
        "logging.getLogger('t').warning('logged line')\n"
        "sys.stdout.write('buffered, no newline')\n"
        "exit_process(7)\n"
    )
    log = tmp_path / "log.txt"
    cmd = [sys.executable, str(script), str(log)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 7
    assert proc.stdout == "buffered, no newline"
    assert "finalized" not in proc.stderr  # atexit (interpreter finalization) did not run
    assert log.read_text().strip() == "logged line"


# ------------------------------------------------------------ two processes (gloo)


def test_ddp_two_processes_match_one_and_resume_in_one(single, tmp_path):
    single_dir, one = single
    two = _run(tmp_path / "ddp", 2, strategy="ddp")
    assert two["world"] == 2 and two["tokens"] == one["tokens"]  # same global batch
    _assert_close(two["losses"], one["losses"])

    rank0 = torch.load(tmp_path / "ddp" / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "ddp" / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "ranks diverged"
    ref = torch.load(single_dir / "final.pt", weights_only=True)
    assert all(torch.allclose(rank0[k], ref[k], atol=PARAM_TOL) for k in ref)
    # Its checkpoint matches the single-process layout (resuming it in one process: test_distributed_cli).
    ckpt = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    plain = torch.load(single_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["optimizer"]["param_groups"] == plain["optimizer"]["param_groups"]


def test_fsdp_two_processes_checkpoint_saved_and_reloaded(single, tmp_path):
    single_dir, one = single
    two = _run(tmp_path / "fsdp", 2, strategy="fsdp")
    _assert_close(two["losses"], one["losses"])
    ref = torch.load(single_dir / "final.pt", weights_only=True)
    full = torch.load(tmp_path / "fsdp" / "final.pt", weights_only=True)
    assert full.keys() == ref.keys()
    assert all(torch.allclose(full[k], ref[k], atol=PARAM_TOL) for k in ref)

    ckpt = torch.load(tmp_path / "fsdp" / "checkpoint.pt", weights_only=True)
    plain = torch.load(single_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["model"].keys() == plain["model"].keys()
    assert ckpt["optimizer"]["param_groups"] == plain["optimizer"]["param_groups"]
    assert ckpt["optimizer"]["state"].keys() == plain["optimizer"]["state"].keys()

    # One process -> FSDP (2) reaches the uninterrupted losses (FSDP -> one: test_distributed_cli).
    fsdp_from_one = _run(tmp_path / "r2", 2, strategy="fsdp", resume=str(single_dir / "checkpoint.pt"), save_at=None)
    _assert_close(fsdp_from_one["losses"], one["losses"][2:])
