"""Multi-process training with torchrun: 2 CPU processes (gloo) against one process, plus the helpers.

The end-to-end test runs the real command line,
``python -m torch.distributed.run --standalone --nproc_per_node=2 -m mcm_core train ...``
(``--standalone`` lets torchrun pick a free port), first with ``--until 3`` and then with
``--resume``, so the two-process result has also gone through a checkpoint and a restart.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mcm_core import distributed
from mcm_core.batches import step_seed
from mcm_core.checkpoint import load_checkpoint
from mcm_core.config import TrainConfig
from mcm_core.train import Trainer

WORLD, STEPS, BATCH, SPLIT_AT = 2, 6, 16, 3
SMALL = {"embed_dim": 64, "depth": 2, "num_heads": 2, "decoder_embed_dim": 64, "decoder_num_heads": 2}
OPTIONS = dict(method="mcm", steps=STEPS, batch_size=BATCH, mask_ratio=0.5, model=SMALL, data={"size": 128},
               device="cpu", deterministic=True, progress=False, log_every=1, warmup_steps=2, eval_size=16,
               precision="fp32")  # the tolerances below are float32's


def cli_args(cfg: TrainConfig) -> list[str]:
    """The ``train`` command line that reproduces ``cfg``."""
    args = ["train", "--set", f"model={json.dumps(cfg.model)}", "--set", f"data={json.dumps(cfg.data)}"]
    for name in ("method", "steps", "batch_size", "mask_ratio", "device", "log_every", "warmup_steps",
                 "eval_size", "precision", "out_dir"):
        args += ["--" + name.replace("_", "-"), str(getattr(cfg, name))]
    return args + ["--deterministic", "--no-progress"]


def torchrun(args: list[str]) -> subprocess.CompletedProcess:
    """Run ``mcm_core`` under torchrun with WORLD CPU processes; fail with their output if it fails."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
               "-m", "mcm_core", *args]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


class ShardMasks(Trainer):
    """One process that draws each step's masks exactly as WORLD processes would.

    Process r trains on rows r, r + WORLD, ... of the global batch (``StepBatchSampler``) with
    a mask from the generator seeded by ``step * WORLD + r``; this trainer puts those masks
    in the same rows, so it sees the same images under the same masks as the processes together.
    """

    def make_mask(self, images: torch.Tensor, mask_ratio: float | None = None) -> torch.Tensor:
        ratio = self.cfg.mask_ratio if mask_ratio is None else mask_ratio
        rows = images.shape[0] // WORLD
        mask = torch.empty(images.shape[0], self.unwrapped.cfg.num_patches, dtype=torch.bool)
        for rank in range(WORLD):
            generator = torch.Generator().manual_seed(step_seed(self.cfg.seed, self.step * WORLD + rank, 1))
            mask[rank::WORLD] = self.masker(rows, ratio, generator=generator, device=images.device,
                                            progress=self.step / self.cfg.steps)
        return mask


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """Train with torchrun: steps 0..2, stop, then resume for steps 3..5. Returns the run folder."""
    cfg = TrainConfig(**OPTIONS, out_dir=str(tmp_path_factory.mktemp("ddp") / "run"))
    first = torchrun(cli_args(cfg) + ["--until", str(SPLIT_AT)])
    assert f"stopped at step {SPLIT_AT} of {STEPS}" in first.stdout
    second = torchrun(cli_args(cfg) + ["--resume"])
    assert "resuming from" in second.stdout and "finished" in second.stdout
    return cfg


@pytest.fixture(scope="module")
def deterministic():
    """Deterministic algorithms for the in-process runs (as ``--deterministic`` in the processes), then off again."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def history(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(two_process_run, tmp_path, deterministic):
    """Two processes with 8 images each = one process with the 16-image global batch, within float rounding.

    What has to match: the global batch (16 = 8 per process x 2), the images of each step (the
    sampler shards each global batch, so the processes together see exactly the one process's
    images), the masks, the initial weights and the schedule. The masks are the one thing a
    plain single process draws differently (one generator per process and step), so the
    reference is a single process given the processes' masks (``ShardMasks``). Then the DDP
    gradient (the mean of the two per-process gradients, each a mean over 8 images) equals the
    single-process gradient (a mean over 16) up to summation order, because every image hides
    the same number of patches and the concept loss is a plain mean over images and concepts.
    The same holds for the logged losses, which are averaged across the processes.

    Measured on CPU after 6 AdamW steps: losses within 1.3e-7 (relative); weights within 8e-9
    on average. The largest weight gaps (6e-5) are in the attention key biases: softmax ignores
    a constant added to every score, so their true gradient is zero, and AdamW turns the
    rounding noise of either summation order into full-size steps. A plain single process,
    whose masks differ, is 2e-4 away on average and 2e-3 to 7e-3 at most. The tolerances sit
    between the two, so a wrong shard, mask, gradient average or resume fails.
    """
    cfg = two_process_run
    folder = Path(cfg.out_dir)
    rows = history(folder / "history.jsonl")
    assert [r["step"] for r in rows] == list(range(STEPS))  # rank 0 alone writes the log, once per step
    ddp_model, info = load_checkpoint(folder / "checkpoint.safetensors")
    assert info.train["step"] == STEPS and json.loads((folder / "metrics.json").read_text())["step"] == STEPS

    reference = ShardMasks(TrainConfig(**{**OPTIONS, "out_dir": str(tmp_path / "one")})).run()
    plain = Trainer(TrainConfig(**{**OPTIONS, "out_dir": str(tmp_path / "plain")})).run()
    losses = torch.tensor([r["loss"] for r in rows])
    torch.testing.assert_close(losses, torch.tensor([r["loss"] for r in reference.history]), rtol=1e-5, atol=0)
    assert not torch.allclose(losses, torch.tensor([r["loss"] for r in plain.history]), rtol=1e-3, atol=0)
    weights, same_masks, other_masks = (flat(m.state_dict()) for m in (ddp_model, reference.model, plain.model))
    gap = (weights - same_masks).abs()
    assert gap.mean() < 1e-7 and gap.max() < 5e-4, (gap.mean(), gap.max())
    assert (other_masks - same_masks).abs().mean() > 1e-5  # the comparison can tell masks apart


def flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """Every tensor of a state dict in one float vector."""
    return torch.cat([value.flatten().float() for value in state.values()])


def test_environment_is_read_and_checked():
    assert distributed.from_environment({}) == distributed.ProcessInfo(0, 1, 0)
    info = distributed.from_environment({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (info.rank, info.world_size, info.local_rank, info.is_main) == (1, 2, 1, False)
    with pytest.raises(ValueError, match=r"not \['LOCAL_RANK'\].*torchrun"):
        distributed.from_environment({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="must be integers"):
        distributed.from_environment({"RANK": "a", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(ValueError, match=r"RANK must be in \[0, WORLD_SIZE\)"):
        distributed.from_environment({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})


def test_backend_device_and_batch_checks():
    assert distributed.backend_for(torch.device("cpu")) == "gloo"
    assert distributed.backend_for(torch.device("cuda")) == "nccl"
    assert distributed.local_device(torch.device("cpu"), distributed.ProcessInfo(1, 2, 1)) == torch.device("cpu")
    distributed.check_global_batch(16, 2)
    with pytest.raises(ValueError, match="divisible by the 3 processes; use e.g. batch_size=15"):
        distributed.check_global_batch(16, 3)


def test_a_plain_process_needs_no_group():
    """Outside torchrun the helpers are no-ops, and DDP without a group is a clear error."""
    values = torch.arange(6.0).reshape(2, 3)
    assert distributed.mean_across_processes(values) is values
    with distributed.process_group(torch.device("cpu")) as info:
        assert info == distributed.ProcessInfo() and not torch.distributed.is_initialized()
    with pytest.raises(RuntimeError, match="start the run with torchrun"):
        distributed.wrap(torch.nn.Linear(2, 2), torch.device("cpu"))


def test_rank_and_step_give_every_process_its_own_masks(tmp_path):
    """Per-process masks: seeded by step * world_size + rank, so no two (step, rank) pairs share one."""
    cfg = TrainConfig(**{**OPTIONS, "out_dir": str(tmp_path / "run")})
    trainer = Trainer(cfg)
    images = torch.rand(BATCH // WORLD, 3, 32, 32)
    masks = {}
    for step in range(3):
        for rank in range(WORLD):
            trainer.step, trainer.rank, trainer.world_size = step, rank, WORLD
            masks[step, rank] = trainer.make_mask(images)
    flat = [m.flatten().tolist() for m in masks.values()]
    assert len({tuple(m) for m in flat}) == len(flat)
    trainer.step, trainer.rank = 1, 1
    assert torch.equal(trainer.make_mask(images), masks[1, 1])


def launch(args: list[str], **popen) -> subprocess.Popen:
    """``python -m mcm_core train ... --nproc-per-node WORLD`` (the launcher starts torchrun itself)."""
    return subprocess.Popen([sys.executable, "-m", "mcm_core", *args, "--nproc-per-node", str(WORLD)],
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


@pytest.mark.slow
def test_a_failing_launch_ends_with_the_workers_one_line_message(tmp_path):
    cfg = TrainConfig(**{**OPTIONS, "steps": 2}, out_dir=str(tmp_path / "run"))
    child = launch(cli_args(cfg) + ["--set", "model.depth=abc"])
    _, err = child.communicate(timeout=300)
    assert child.returncode == 2, err[-3000:]
    assert err.strip().splitlines()[-1] == ("python -m mcm_core train: error: model option 'depth' of 'mcm' must "
                                            "be int, got 'abc' (str); e.g. model.depth=6")


@pytest.mark.slow
def test_sigterm_stops_every_process_at_the_same_step_with_a_checkpoint(tmp_path):
    """SIGTERM to the launcher reaches both workers through torchrun; they agree on a step, rank 0 saves."""
    cfg = TrainConfig(**{**OPTIONS, "steps": 400, "log_every": 2}, out_dir=str(tmp_path / "run"))
    child = launch(cli_args(cfg))
    log, deadline = tmp_path / "run" / "history.jsonl", time.monotonic() + 300
    while child.poll() is None and time.monotonic() < deadline and (
            not log.exists() or log.read_bytes().count(b"\n") < 4):
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=300)
    assert child.returncode == 128 + signal.SIGTERM, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert "stopped by SIGTERM at step" in last and "checkpoint saved to" in last, err[-3000:]
    _, info = load_checkpoint(tmp_path / "run")
    step = info.train["step"]
    assert step % 2 == 0 and 4 <= step < 400  # a logging step, the one both processes agreed on
    assert [row["step"] for row in info.train["history"]] == list(range(step))
    resumed = launch(cli_args(cfg) + ["--resume", "--until", str(step + 2)])
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0 and f"stopped at step {step + 2} of 400" in out, err[-3000:]
