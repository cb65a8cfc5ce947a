"""Reliability (issue #8): bad input answered clearly, crash safety with real processes, reproducibility.

Bad input that other test files already cover is not repeated here; docs/reliability.md lists
every case with the test that proves it. The crash tests run ``python -m mcm_core train`` in
child processes and kill them with SIGKILL or a file-size limit: no mocks.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mcm_core.checkpoint import CheckpointError, load_checkpoint, load_state_strict, save_checkpoint
from mcm_core.cli import main
from mcm_core.config import TrainConfig, load_config
from mcm_core.data import load_dataset
from mcm_core.models import build_model
from mcm_core.train import Trainer, fit

SMALL = {"embed_dim": 64, "depth": 2, "num_heads": 2, "decoder_embed_dim": 64, "decoder_num_heads": 2}
# The crash tests' run: 32 steps, a checkpoint every 4, one log line per step (what the killer watches).
RUN = dict(method="mcm", steps=32, batch_size=16, mask_ratio=0.5, model=SMALL, data={"size": 128}, device="cpu",
           deterministic=True, progress=False, log_every=1, warmup_steps=2, checkpoint_every=4, eval_size=16)
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}  # one thread, like this process


def config(tmp_path: Path, **changes) -> TrainConfig:
    return TrainConfig(**{**RUN, "out_dir": str(tmp_path / "run"), **changes})


def cli_args(cfg: TrainConfig) -> list[str]:
    """The ``train`` command line that reproduces ``cfg``."""
    args = ["train", "--set", f"model={json.dumps(cfg.model)}", "--set", f"data={json.dumps(cfg.data)}"]
    for name in ("method", "steps", "batch_size", "mask_ratio", "device", "log_every", "warmup_steps",
                 "checkpoint_every", "eval_size", "out_dir"):
        args += ["--" + name.replace("_", "-"), str(getattr(cfg, name))]
    return args + ["--deterministic", "--no-progress"]


def train_command(cfg: TrainConfig, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mcm_core", *cli_args(cfg), *extra]


def without_timing(rows: list[dict]) -> list[dict]:
    """History rows without the wall-clock field (the only one allowed to differ between runs)."""
    return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in rows]


def read_history(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def deterministic():
    """Deterministic algorithms in this process too (the children get ``--deterministic``), then off again."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, deterministic):
    """The uninterrupted run, trained in this process."""
    return fit(config(tmp_path_factory.mktemp("reference")))


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """A child ``python -m mcm_core train`` killed with SIGKILL at a random step, then ``--resume``d.

    Returns ``(cfg, kill_step, history before the resume, checkpoint step at the kill)``.
    """
    cfg = config(tmp_path_factory.mktemp("killed"))
    folder = Path(cfg.out_dir)
    target = random.Random().randrange(6, 17)  # after the first checkpoint (step 4), well before step 32
    child = subprocess.Popen(train_command(cfg), env=CHILD_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while child.poll() is None and time.monotonic() < deadline:
        log = folder / "history.jsonl"
        if log.exists() and log.read_bytes().count(b"\n") >= target:
            child.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    child.wait(timeout=60)
    stderr = child.stderr.read().decode()
    assert child.returncode == -signal.SIGKILL, f"the child was not killed at step {target}: {stderr[-2000:]}"
    before = read_history(folder)
    _, info = load_checkpoint(folder / "checkpoint.safetensors")
    resumed = subprocess.run(train_command(cfg, "--resume"), env=CHILD_ENV, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {folder / 'checkpoint.safetensors'}" in resumed.stdout
    return cfg, target, before, int(info.train["step"])


# =========================================================================== 2. crash safety
@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_ends_exactly_like_an_uninterrupted_run(killed_and_resumed, reference):
    cfg, target, _, checkpoint_step = killed_and_resumed
    assert checkpoint_step % cfg.checkpoint_every == 0 and 4 <= checkpoint_step <= 32 - 4, checkpoint_step
    folder = Path(cfg.out_dir)
    resumed = load_file(folder / "checkpoint.safetensors")
    uninterrupted = load_file(reference.checkpoint)
    assert resumed.keys() == uninterrupted.keys()  # weights, AdamW moments and step counts
    for name, value in uninterrupted.items():
        assert torch.equal(resumed[name], value), f"{name} differs after a kill at step {target}"
    _, info = load_checkpoint(folder / "checkpoint.safetensors")
    assert without_timing(info.train["history"]) == without_timing(reference.history)
    assert without_timing(read_history(folder)) == without_timing(reference.history)
    assert info.train["scheduler"] == load_checkpoint(reference.checkpoint)[1].train["scheduler"]


@pytest.mark.slow
def test_one_seed_gives_bit_identical_loss_curves_in_two_processes(killed_and_resumed, reference):
    """The killed child trained from scratch in its own process: every step it logged is this process's, bit for bit."""
    _, target, before, _ = killed_and_resumed
    assert len(before) >= target
    assert without_timing(before) == without_timing(reference.history[:len(before)])


@pytest.mark.slow
def test_a_failed_save_is_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path, reference):
    """A file-size limit (RLIMIT_FSIZE, as a full disk) makes the write fail for real in a child process."""
    cfg = config(tmp_path)
    checkpoint = Path(cfg.out_dir) / "checkpoint.safetensors"
    script = f"""
import hashlib, json, resource, signal, sys
from mcm_core.cli import main
args, checkpoint = json.loads(sys.argv[1]), sys.argv[2]
digest = lambda: hashlib.sha256(open(checkpoint, "rb").read()).hexdigest()
assert main(args + ["--until", "8"]) == 0
before = digest()
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG instead of killing us
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (len(open(checkpoint, "rb").read()) // 2, hard))
code = main(args + ["--resume"])
print(json.dumps({{"code": code, "before": before, "after": digest()}}))
"""
    child = subprocess.run([sys.executable, "-c", script, json.dumps(cli_args(cfg)), str(checkpoint)],
                           env=CHILD_ENV, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    error = child.stderr.strip().splitlines()[-1]
    assert result["code"] == 2 and "error: could not write" in error and str(checkpoint) in error, child.stderr
    assert "File too large" in error and "previous file there is intact" in error
    assert result["after"] == result["before"]  # the step-8 checkpoint, byte for byte
    assert not [p.name for p in checkpoint.parent.iterdir() if ".tmp-" in p.name]
    _, info = load_checkpoint(checkpoint)
    assert info.train["step"] == 8
    # With the limit gone, resuming from the kept checkpoint ends exactly like the uninterrupted run.
    resumed = fit(cfg, resume=True)
    for name, value in load_file(reference.checkpoint).items():
        assert torch.equal(load_file(resumed.checkpoint)[name], value), name


@pytest.mark.slow
def test_sigkill_in_the_middle_of_saving_leaves_a_whole_checkpoint(tmp_path):
    """A child saves two models in turn, as fast as it can; killed at a random moment, the file is one of them."""
    path = tmp_path / "checkpoint.safetensors"
    script = """
import sys, torch
from mcm_core.checkpoint import save_checkpoint
from mcm_core.models import build_model
models = []
for which in range(2):
    torch.manual_seed(which)
    models.append(build_model("mae", "tiny"))
saves = 0
while True:
    save_checkpoint(sys.argv[1], models[saves % 2], train={"which": saves % 2, "saves": saves})
    saves += 1
    if saves == 2:
        print("saving", flush=True)
"""
    child = subprocess.Popen([sys.executable, "-c", script, str(path)], env=CHILD_ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "saving", child.stderr.read()[-2000:]
    time.sleep(random.uniform(0.0, 0.5))
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    model, info = load_checkpoint(path)
    torch.manual_seed(info.train["which"])
    expected = build_model("mae", "tiny")
    for name, value in expected.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    assert info.train["saves"] >= 1


# =========================================================================== 3. reproducibility
def test_data_loader_workers_give_the_same_stream_as_the_main_process(tmp_path, deterministic):
    """Batches and masks are functions of (seed, step): two worker processes change nothing, bit for bit."""
    quick = dict(steps=6, checkpoint_every=0)
    main_process = fit(config(tmp_path / "a", **quick))
    workers = fit(config(tmp_path / "b", num_workers=2, **quick))
    assert without_timing(workers.history) == without_timing(main_process.history)


def test_package_versions_are_recorded_next_to_every_run(tmp_path):
    import timm

    cfg = config(tmp_path, steps=2, checkpoint_every=0)
    result = fit(cfg)
    versions = json.loads((Path(cfg.out_dir) / "versions.json").read_text())
    assert versions["torch"] == torch.__version__ and versions["timm"] == timm.__version__
    assert versions["numpy"] == np.__version__ and versions["python"] == sys.version.split()[0]
    _, info = load_checkpoint(result.checkpoint)
    assert info.versions == versions


# =========================================================================== 1. bad input
class FakeImages(torch.utils.data.Dataset):
    """A concept data set whose images or targets are wrong in one way: (3, 32, 32) images, (13,) targets."""

    concept_names = [f"c{i}" for i in range(13)]

    def __init__(self, scale: float = 1.0, target: float = 1.0) -> None:
        self.scale, self.target = scale, target

    def __len__(self) -> int:
        return 32

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.rand(3, 32, 32) * self.scale, torch.full((13,), self.target)


@pytest.mark.parametrize("data, match", [
    (FakeImages(scale=255.0), r"images must be floats in \[0, 1\].*divide uint8 images by 255"),
    (FakeImages(scale=float("nan")), r"images must be floats in \[0, 1\]"),
    (FakeImages(target=0.7), r"concept targets must be 0 or 1, got values such as \[0.7"),
    (FakeImages(target=-1.0), r"map -1/1 labels with \(labels > 0\)"),
])
def test_bad_values_stop_training_before_the_first_step(tmp_path, data, match):
    trainer = Trainer(config(tmp_path, steps=4, checkpoint_every=0))
    trainer.dataset = data
    with pytest.raises(ValueError, match=match):
        trainer.run()
    assert trainer.step == 0 and not trainer.checkpoint_path.exists()


def test_concept_vectors_must_be_binary_and_edits_well_formed():
    model = build_model("mcm", "tiny", **SMALL)
    images = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match="concept targets must be 0 or 1"):
        model(images, concepts=torch.full((2, 13), 0.5))
    model(images, concepts=torch.ones(2, 13, dtype=torch.bool))  # bool and 0/1 floats are fine
    with pytest.raises(ValueError, match=r"must have shape \(2, 13\)"):
        model(images, concepts=torch.ones(2, 12))
    with pytest.raises(ValueError, match=r"values must be -1 \(leave the concept alone\), 0 or 1, got \[2\]"):
        model.edit(images, torch.full((2, 13), 2))
    with pytest.raises(ValueError, match="mask_ratio must be in"):
        model(images, mask_ratio=1.0)


@pytest.mark.parametrize("change, error, match", [
    ({"method": "mea"}, ValueError, r"unknown model 'mea'; valid names are \[.*'mae'.*'mcm'"),
    ({"preset": "huge"}, ValueError, r"unknown preset 'huge'; valid presets are \['base', 'large', 'small', 'tiny'\]"),
    ({"dataset": "cifar10"}, ValueError, r"unknown dataset 'cifar10'; valid names: \['shapes'"),
    ({"data": {"image_size": 34}}, ValueError, r"img_size=34 is not divisible by patch_size=4.*e.g. 32"),
    ({"model": {"depht": 4}}, TypeError, r"unknown option\(s\) \['depht'\] for model 'mcm'; valid options"),
])
def test_bad_names_fail_before_anything_is_written(tmp_path, change, error, match):
    cfg = config(tmp_path, **change)
    with pytest.raises(error, match=match):
        fit(cfg)
    assert not Path(cfg.out_dir).exists()


@pytest.mark.parametrize("field, value, match", [
    ("log_every", 0, "log_every must be at least 1, got 0; e.g. log_every=10"),
    ("lr", 0.0, "lr must be greater than 0"),
    ("lr", float("nan"), "lr must be greater than 0, got nan"),
    ("beta2", 1.0, r"beta2 must be in \[0, 1\)"),
    ("ema_momentum", 1.5, r"ema_momentum must be in \[0, 1\]"),
    ("num_workers", -1, "num_workers must be at least 0"),
    ("masking", "blocks", "unknown masking 'blocks'; choose random, block or hierarchical"),
    ("hierarchy_affinity", "cosine", "unknown hierarchy_affinity 'cosine'; choose tokens or attention"),
])
def test_config_values_out_of_range_are_named(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{field: value})


def test_yaml_files_and_overrides(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("steps: [1, 2\nlr: 0.1\n")
    with pytest.raises(ValueError, match="broken.yaml is not valid YAML.*fix the syntax"):
        load_config(broken)
    with pytest.raises(ValueError, match="--set model.depth is not valid YAML"):
        load_config(overrides={"model.depth": "[4,"})
    assert main(["train", "--config", str(broken), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "is not valid YAML" in err and err.count("\n") == 1 and "Traceback" not in err
    science = tmp_path / "science.yaml"
    science.write_text("lr: 1e-3\nmin_lr: 1e-6\n")  # YAML 1.1 reads these as strings; they are floats here
    cfg = load_config(science)
    assert (cfg.lr, cfg.min_lr) == (1e-3, 1e-6)
    science.write_text("lr: fast\n")
    with pytest.raises(TypeError, match="config field 'lr' must be float, got 'fast'"):
        load_config(science)


def test_yaml_tags_never_run_code(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"steps: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ValueError, match="evil.yaml is not valid YAML.*could not determine a constructor"):
        load_config(evil)
    assert not marker.exists()


# ---------------------------------------------------------------- checkpoints
def test_corrupted_checkpoints_are_refused(tmp_path):
    path = save_checkpoint(tmp_path / "ok.safetensors", build_model("mcm", "tiny", **SMALL), train={"step": 3})
    data = path.read_bytes()
    flipped = bytearray(data)
    flipped[len(data) - 1000] ^= 0x10  # one bit of one weight: safetensors alone would load it silently
    (tmp_path / "bit.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="bit.safetensors is corrupted.*checksum.*earlier checkpoint"):
        load_checkpoint(tmp_path / "bit.safetensors")
    header = bytearray(data)
    header[20:40] = b"\xff" * 20  # garbage in the JSON header
    (tmp_path / "header.safetensors").write_bytes(bytes(header))
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint.*truncated, corrupted"):
        load_checkpoint(tmp_path / "header.safetensors")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        load_checkpoint(tmp_path / "empty.safetensors")


def test_a_checkpoint_of_another_configuration_lists_every_mismatch(tmp_path):
    deeper = save_checkpoint(tmp_path / "deeper.safetensors", build_model("mcm", "tiny", **{**SMALL, "depth": 4}))
    trainer = Trainer(config(tmp_path, steps=4))
    with pytest.raises(CheckpointError, match=r"does not match this model's configuration: missing \[\], "
                                              r"unexpected \['concept_blocks.2.attn.kv.bias'"):
        trainer.resume(deeper)
    wider = build_model("mcm", "tiny", **{**SMALL, "embed_dim": 128, "num_heads": 4})
    with pytest.raises(CheckpointError, match=r"shape mismatches \[.*'encoder.cls_token: checkpoint \(1, 1, 128\) "
                                              r"vs model \(1, 1, 64\)'"):
        load_state_strict(trainer.unwrapped, wider.state_dict(), "wider.safetensors")


def test_loading_never_unpickles(tmp_path):
    """Pickled files (torch.save, raw pickle) are refused from their first bytes; the payload never runs."""
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return open, (str(marker), "w")  # unpickling creates the marker file

    torch.save({"model": Payload()}, tmp_path / "torch.pt")
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps(Payload()))
    for name in ("torch.pt", "raw.pkl"):
        with pytest.raises(CheckpointError, match="not a safetensors checkpoint.*pickled .pt/.pth files are refused"):
            load_checkpoint(tmp_path / name)
        assert main(["eval", "--checkpoint", str(tmp_path / name)]) == 2
    assert not marker.exists()
    pickle.loads((tmp_path / "raw.pkl").read_bytes()).close()  # the payload is live: unpickling runs it
    assert marker.exists()


# ---------------------------------------------------------------- data directories
def run_unprivileged(check) -> str:
    """``check()`` in a forked child that cannot bypass file permissions (root drops to ``nobody``).

    Returns the child's error as ``"Type: message"`` (or ``"no error"``).
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running any pytest machinery
        outcome = "no error"
        try:
            os.close(read)
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            check()
        except BaseException as error:  # noqa: BLE001 (reported to the parent)
            outcome = f"{type(error).__name__}: {error}"
        finally:
            os.write(write, outcome.encode())
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as handle:
        return handle.read().decode()


@pytest.fixture
def shared_folder():
    """A folder under /tmp that an unprivileged user may enter; removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="mcm-reliability-"))
    folder.chmod(0o755)
    yield folder
    for path in [folder, *folder.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
    shutil.rmtree(folder)


def test_missing_and_unreadable_data_folders_are_named(tmp_path, shared_folder):
    with pytest.raises(FileNotFoundError, match="image folder .*nowhere does not exist"):
        load_dataset("folder", root=tmp_path / "nowhere")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        load_dataset("folder", root=tmp_path / "file.png")
    locked = shared_folder / "locked"
    locked.mkdir()
    (locked / "a.png").write_bytes(b"x")
    locked.chmod(0o000)
    for name, what in (("folder", "image folder"), ("fashion_mnist", "Fashion-MNIST folder"),
                       ("celeba", "CelebA folder")):
        outcome = run_unprivileged(lambda: load_dataset(name, root=locked))
        assert outcome.startswith(f"PermissionError: {what} {locked} is not readable"), outcome
        assert "chmod -R u+rX" in outcome


def test_damaged_image_files_are_named(tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 40), "red").save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(ValueError, match=r"bad.png"):  # found while the data set is built, before any training
        load_dataset("folder", root=tmp_path)
    data = load_dataset("folder", root=tmp_path, skip_unreadable=True)
    assert len(data) == 1 and data[0][0].shape == (3, 32, 32)
