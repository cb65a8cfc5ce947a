"""Run folders (issue 19): nothing lost by training into a run, by a signal, or by a killed save.

The command-line and signal cases start real ``python -m mcm_core train`` processes; no mocks.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mcm_core.checkpoint import CheckpointError, load_checkpoint, write_error_message
from mcm_core.config import TrainConfig
from mcm_core.runs import StopSignals, TrainingInterrupted, check_run_folder, clean_stale_temporaries, read_run
from mcm_core.train import Trainer, TrainingDiverged, fit

SMALL = {"embed_dim": 64, "depth": 2, "num_heads": 2, "decoder_embed_dim": 64, "decoder_num_heads": 2}
RUN = dict(method="mae", steps=200, batch_size=16, mask_ratio=0.5, model=SMALL, data={"size": 128}, device="cpu",
           deterministic=True, progress=False, log_every=1, warmup_steps=2, eval_size=16)
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def config(folder: Path, **changes) -> TrainConfig:
    return TrainConfig(**{**RUN, "out_dir": str(folder), **changes})


def command(cfg: TrainConfig, *extra: str) -> list[str]:
    args = [sys.executable, "-m", "mcm_core", "train", "--set", f"model={json.dumps(cfg.model)}",
            "--set", f"data={json.dumps(cfg.data)}"]
    for name in ("method", "steps", "batch_size", "mask_ratio", "device", "log_every", "warmup_steps",
                 "eval_size", "out_dir"):
        args += ["--" + name.replace("_", "-"), str(getattr(cfg, name))]
    return args + ["--deterministic", "--no-progress", *extra]


def run(cfg: TrainConfig, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(cfg, *extra), env=CHILD_ENV, capture_output=True, text=True, timeout=300)


def history_lines(folder: Path) -> int:
    path = folder / "history.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def stop_child_with(cfg: TrainConfig, number: int, after_steps: int) -> subprocess.CompletedProcess:
    """Start a training child, send it ``number`` once ``after_steps`` steps are logged, wait for it."""
    child = subprocess.Popen(command(cfg), env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while child.poll() is None and time.monotonic() < deadline and history_lines(Path(cfg.out_dir)) < after_steps:
        time.sleep(0.01)
    child.send_signal(number)
    out, err = child.communicate(timeout=120)
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


# ----------------------------------------------------------------------- training into a run's folder
@pytest.mark.slow
def test_training_into_a_run_folder_is_refused_unless_resume_overwrite_or_extend(tmp_path):
    cfg = config(tmp_path / "run", steps=4)
    first = run(cfg)
    assert first.returncode == 0, first.stderr[-2000:]
    checkpoint = Path(cfg.out_dir) / "checkpoint.safetensors"
    weights, metrics = checkpoint.read_bytes(), (Path(cfg.out_dir) / "metrics.json").read_bytes()

    again = run(cfg)  # no option: refused, nothing touched
    assert again.returncode == 2
    line = again.stderr.strip().splitlines()[-1]
    assert "holds a finished mae run (step 4 of 4)" in line
    assert "--extend N" in line and "--overwrite" in line and "--out-dir" in line
    assert checkpoint.read_bytes() == weights

    finished = run(cfg, "--resume")  # a finished run: nothing trained, nothing evaluated again
    assert finished.returncode == 0 and "nothing to train" in finished.stdout and "--extend N" in finished.stdout
    assert checkpoint.read_bytes() == weights and (Path(cfg.out_dir) / "metrics.json").read_bytes() == metrics

    extended = run(cfg, "--extend", "3")  # train it further: 3 more steps, evaluated at the new end
    assert extended.returncode == 0, extended.stderr[-2000:]
    _, info = load_checkpoint(Path(cfg.out_dir))  # a run folder is accepted
    assert info.train["step"] == 7 and info.train["config"]["steps"] == 7
    assert json.loads((Path(cfg.out_dir) / "metrics.json").read_text())["step"] == 7

    replaced = run(cfg, "--overwrite")
    assert replaced.returncode == 0 and "--overwrite: deleted a finished mae run (step 7 of 7)" in replaced.stdout
    _, info = load_checkpoint(checkpoint)
    assert info.train["step"] == 4 and len(info.train["history"]) == 4  # a fresh run, not an extension


def test_check_run_folder_names_the_options(tmp_path):
    assert check_run_folder(tmp_path / "new", resume=False, overwrite=False) is None
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "history.jsonl").write_text("")
    with pytest.raises(FileExistsError, match="holds the files of a run that saved no checkpoint"):
        check_run_folder(tmp_path / "half", resume=False, overwrite=False)
    with pytest.raises(ValueError, match="contradict"):
        check_run_folder(tmp_path / "half", resume=True, overwrite=True)
    stopped = fit(config(tmp_path / "stopped", steps=6), until=2)
    assert stopped.checkpoint is not None
    state = read_run(tmp_path / "stopped")
    assert (state.method, state.step, state.steps, state.finished) == ("mae", 2, 6, False)
    with pytest.raises(FileExistsError, match=r"unfinished mae run \(step 2 of 6\).*--resume continues it"):
        check_run_folder(tmp_path / "stopped", resume=False, overwrite=False)


# ----------------------------------------------------------------------- signals
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The 40-step run the stopped-and-resumed ones must end like (trained once, in a child process)."""
    folder = tmp_path_factory.mktemp("uninterrupted") / "run"
    done = run(config(folder, steps=40))
    assert done.returncode == 0, done.stderr[-2000:]
    return folder / "checkpoint.safetensors"


@pytest.mark.slow
@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_a_checkpoint_at_the_current_step_and_resume_ends_like_an_uninterrupted_run(
        tmp_path, number, uninterrupted):
    cfg = config(tmp_path / "run", steps=40)
    stopped = stop_child_with(cfg, number, after_steps=8)
    assert stopped.returncode == 128 + number, stopped.stderr[-2000:]
    name = signal.Signals(number).name
    last = stopped.stderr.strip().splitlines()[-1]
    assert f"stopped by {name} at step" in last and "checkpoint saved to" in last and "--resume" in last
    _, info = load_checkpoint(Path(cfg.out_dir))
    step = info.train["step"]
    assert 8 <= step < 40
    assert [row["step"] for row in info.train["history"]] == list(range(step))  # every finished step kept

    resumed = run(cfg, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ours = load_file(Path(cfg.out_dir) / "checkpoint.safetensors")
    for key, value in load_file(uninterrupted).items():
        assert torch.equal(ours[key], value), key


def test_stop_signals_restore_the_previous_handlers():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with StopSignals(announce=lambda text: None) as stop:
        assert signal.getsignal(signal.SIGINT) != before[0]
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop.requested and stop.signal_number == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGINT)  # at once: the same request delivered twice (terminal + torchrun)
        time.sleep(0.05)
        stop.SAME_EVENT_S = 0.0
        with pytest.raises(KeyboardInterrupt, match="again: stopped at once"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_training_interrupted_is_a_keyboard_interrupt_that_names_the_checkpoint(tmp_path):
    error = TrainingInterrupted(5, 10, tmp_path / "checkpoint.safetensors", signal.SIGINT)
    assert isinstance(error, KeyboardInterrupt)
    assert str(error).startswith("stopped by SIGINT at step 5 of 10; checkpoint saved to")


# ----------------------------------------------------------------------- files
def test_temporary_files_of_a_killed_save_are_cleaned_on_the_next_start(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    dead = folder / ".checkpoint.safetensors.tmp-999999999"  # no such process
    alive = folder / f".notes.txt.tmp-{os.getppid()}"  # a save in progress in a live process
    dead.write_bytes(b"half a checkpoint")
    alive.write_bytes(b"")
    assert clean_stale_temporaries(folder) == [dead]
    dead.write_bytes(b"half a checkpoint")
    fit(config(folder, steps=2))
    assert not dead.exists() and alive.exists()


@pytest.mark.slow
def test_run_files_get_the_permissions_of_the_umask(tmp_path):
    cfg = config(tmp_path / "run", steps=2)
    script = ("import os, sys; os.umask(0o027); from mcm_core.cli import main; "
              "sys.exit(main(sys.argv[1:]))")
    child = subprocess.run([sys.executable, "-c", script, *command(cfg)[3:]], env=CHILD_ENV, capture_output=True,
                           text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    modes = {path.name: path.stat().st_mode & 0o777 for path in Path(cfg.out_dir).iterdir()}
    assert modes["checkpoint.safetensors"] == 0o640, modes
    assert set(modes.values()) == {0o640}, modes


def test_write_errors_name_the_real_cause(tmp_path):
    path = tmp_path / "run" / "checkpoint.safetensors"
    denied = write_error_message(path, PermissionError(errno.EACCES, "Permission denied"))
    assert "you cannot write into" in denied and "out_dir" in denied and "disk" not in denied
    full = write_error_message(path, OSError(errno.ENOSPC, "No space left on device"))
    assert "disk (or your quota) is full" in full
    too_big = write_error_message(path, OSError(errno.EFBIG, "File too large"))
    assert "ulimit -f" in too_big


# ----------------------------------------------------------------------- resuming the wrong thing
def test_resuming_another_methods_checkpoint_names_the_method(tmp_path):
    fit(config(tmp_path / "mae", steps=2))
    trainer = Trainer(config(tmp_path / "mcm", method="mcm", steps=2))
    with pytest.raises(CheckpointError, match="is a mae run and this config trains mcm; resume it with method=mae"):
        trainer.resume(tmp_path / "mae")


def test_a_bad_value_in_a_later_batch_is_named_as_data_not_learning_rate(tmp_path):
    cfg = config(tmp_path / "run", steps=6, deterministic=False)
    trainer = Trainer(cfg)
    poisoned = set(trainer.step_ids.ids(3)[:2])
    clean = trainer.dataset

    class Poisoned(torch.utils.data.Dataset):
        def __len__(self):
            return len(clean)

        def __getitem__(self, index):
            image, target = clean[index]
            return (image * float("nan") if index in poisoned else image), target

    trainer.dataset = Poisoned()
    # On a CPU the model's value check stops the step; on a GPU the loss check at the next log line does.
    with pytest.raises(ValueError, match=r"the batch of step 3 holds bad values: 2 image\(s\) with NaN"):
        trainer.run()
    assert trainer.step == 3
    nan_loss_at_step_3 = [(3, 0.1, {"loss": torch.tensor(float("nan"))})]  # what a GPU step logs
    with pytest.raises(TrainingDiverged, match=r"at step 3: the batch of step 3 holds bad values: 2 image\(s\)"):
        trainer.flush(nan_loss_at_step_3, time.perf_counter())
