"""The command line: every option documented, train -> eval -> edit end to end, clean errors.

Everything but one test calls ``main([...])`` in-process (no interpreter or torch start-up per
call); one test runs the real ``python -m mcm_core`` subprocess.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import subprocess
import sys

import pytest
import yaml

from mcm_core.checkpoint import load_checkpoint
from mcm_core.cli import build_parser, main
from mcm_core.config import TrainConfig

SMALL = "{embed_dim: 64, depth: 2, num_heads: 2, decoder_embed_dim: 64, decoder_num_heads: 2}"
SMALL_MAE = "{embed_dim: 64, depth: 2, num_heads: 2, decoder_embed_dim: 64, decoder_num_heads: 2, decoder_depth: 1}"


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def squash(text: str) -> str:
    """Text without whitespace, so help texts match whatever argparse's line wrapping did."""
    return "".join(text.split())


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` with stdout and stderr captured (usable in module-scoped fixtures)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def strict_json(path) -> dict:
    """Parse JSON, failing on NaN / Infinity (metrics files must be strict JSON)."""
    def reject(token):
        raise AssertionError(f"{path} holds the non-JSON constant {token}")
    return json.loads(path.read_text(), parse_constant=reject)


@pytest.fixture(scope="module")
def mcm_run(tmp_path_factory):
    """One tiny MCM run: YAML file plus command-line flags; returns (run folder, stdout)."""
    root = tmp_path_factory.mktemp("cli")
    config = root / "run.yaml"
    config.write_text(yaml.safe_dump({"steps": 50, "seed": 3, "batch_size": 64, "lr": 0.002,
                                      "model": {"depth": 4}, "data": {"size": 512}}))
    run = root / "run"
    code, out, err = run_cli(["train", "--config", str(config), "--steps", "3", "--batch-size", "8",
                              "--set", "data.size=64", "--model", SMALL, "--no-progress",
                              "--out-dir", str(run)])
    assert code == 0, err
    return run, out


# ---------------------------------------------------------------------------- help
def test_train_help_lists_every_config_field_with_its_help(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(TrainConfig):
        assert flag(f.name) in out, f.name
        assert squash(f.metadata["help"]) in squash(out), f.name
        if f.type in ("bool", bool):
            assert "--no-" + f.name.replace("_", "-") in out
    for option in ("--config", "--set", "--resume", "--until"):
        assert option in out


def test_every_option_of_every_command_is_documented(capsys):
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(commands) == {"train", "eval", "edit", "export"}
    for name, sub in commands.items():
        assert main([name, "--help"]) == 0
        out = capsys.readouterr().out
        for action in sub._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.option_strings)
            assert all(option in out for option in action.option_strings), (name, action.option_strings)
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in commands)


def test_module_entry_point_help_in_a_subprocess():
    proc = subprocess.run([sys.executable, "-m", "mcm_core", "train", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--batch-size" in proc.stdout and "--no-progress" in proc.stdout


# ---------------------------------------------------------------------------- configuration
def test_flags_override_the_yaml_file_and_set_comes_last(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"steps": 50, "lr": 0.01, "batch_size": 32, "progress": True,
                                      "model": {"depth": 4, "embed_dim": 64}}))
    code = main(["train", "--config", str(config), "--steps", "7", "--lr", "0.5", "--set", "lr=0.02",
                 "--model", "{depth: 2}", "--set", "model.num_heads=2", "--compile", "--no-progress",
                 "--data", "{size: 100}", "--dry-run"])
    assert code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["steps"] == 7 and cfg["lr"] == 0.02 and cfg["batch_size"] == 32  # flag, --set, file
    assert cfg["model"] == {"depth": 2, "embed_dim": 64, "num_heads": 2}  # merged key by key
    assert cfg["data"] == {"size": 100}
    assert cfg["compile"] is True and cfg["progress"] is False
    assert main(["train", "--compile", "false", "--dry-run"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["compile"] is False


@pytest.mark.parametrize("argv, expected", [
    (["train", "--set", "nosuch=1"], "unknown config key 'nosuch'"),
    (["train", "--set", "steps.x=1"], "has no sub-keys"),
    (["train", "--steps", "abc"], "option 'steps' expects int, got 'abc'"),
    (["train", "--model", "[1, 2]"], "option 'model' expects dict"),
    (["train", "--progress", "maybe"], "option 'progress' expects bool"),
    (["train", "--mask-ratio", "1.5"], "mask_ratio must be in [0, 1)"),
    (["train", "--set", "novalue"], "must look like key=value"),
    (["train", "--config", "no/such.yaml"], "config file no/such.yaml not found"),
    (["train", "--resume", "no/such.safetensors", "--steps", "1"], "no/such.safetensors not found"),
    (["eval", "--checkpoint", "no/such.safetensors"], "checkpoint no/such.safetensors not found"),
    (["edit", "--checkpoint", "no/such.safetensors", "--concept", "0", "--state", "1", "--output", "x.png"],
     "not found"),
])
def test_bad_input_exits_2_with_one_line_message(argv, expected, capsys):
    if argv[0] == "train" and "--resume" not in argv:
        argv = argv + ["--dry-run"]  # nothing trains even if validation were to pass
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert err.strip().count("\n") == 0, err


def test_bad_yaml_files_and_checkpoints_exit_2(tmp_path, capsys):
    unknown, wrong = tmp_path / "unknown.yaml", tmp_path / "wrong.yaml"
    unknown.write_text("stepz: 3\n")
    wrong.write_text("steps: many\n")
    assert main(["train", "--config", str(unknown), "--dry-run"]) == 2
    assert "unknown config key(s) ['stepz']" in capsys.readouterr().err
    assert main(["train", "--config", str(wrong), "--dry-run"]) == 2
    assert "config field 'steps' must be int" in capsys.readouterr().err
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"not a checkpoint at all")
    assert main(["eval", "--checkpoint", str(fake)]) == 2
    err = capsys.readouterr().err
    assert "not a safetensors checkpoint" in err and "Traceback" not in err
    assert main(["train", "--bogus-flag"]) == 2  # argparse's own usage error
    assert "unrecognized arguments: --bogus-flag" in capsys.readouterr().err


def test_cuda_without_a_gpu_is_a_clean_error(capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["train", "--device", "cuda", "--steps", "1"]) == 2
    assert "no CUDA GPU is available" in capsys.readouterr().err


# ---------------------------------------------------------------------------- train, eval, edit
def test_train_writes_checkpoint_and_metrics(mcm_run):
    run, out = mcm_run
    assert {"checkpoint.safetensors", "config.yaml", "history.jsonl", "metrics.json"} <= {p.name for p in run.iterdir()}
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["steps"] == 3 and saved["batch_size"] == 8  # flags beat the file
    assert saved["seed"] == 3 and saved["lr"] == 0.002  # the file beats the defaults
    assert saved["data"] == {"size": 64}  # --set data.size beats the file's mapping
    assert saved["model"]["depth"] == 2 and saved["model"]["embed_dim"] == 64
    metrics = strict_json(run / "metrics.json")
    assert metrics["step"] == 3 and metrics["split"] == "val" and metrics["num_images"] == 64
    assert set(metrics["concepts"]["macro"]) == {"accuracy", "precision", "recall", "f1", "auc"}
    assert metrics["concepts"]["names"][0] == "circle" and len(metrics["concepts"]["per_concept"]) == 13
    assert metrics["reconstruction"]["mse"] > 0
    assert "macro acc" in out and str(run / "metrics.json") in out


def test_eval_prints_and_writes_metrics(mcm_run, tmp_path, capsys):
    run, _ = mcm_run
    output = tmp_path / "eval.json"
    code = main(["eval", "--checkpoint", str(run / "checkpoint.safetensors"), "--size", "16", "--knn", "--probe",
                 "--edit", "--train-size", "32", "--output", str(output)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "macro" in captured.out and "noisy_background" in captured.out  # the per-concept table
    metrics = strict_json(output)
    assert metrics["split"] == "test" and metrics["num_images"] == 16 and metrics["step"] == 3
    assert 0 <= metrics["concepts"]["macro"]["accuracy"] <= 1
    assert metrics["reconstruction"]["mask_ratio"] == 0.25  # the training mask ratio
    assert 0 <= metrics["probe"]["accuracy"] <= 1 and set(metrics["probe"]["per_concept_f1"]) >= {"circle"}
    assert 0 <= metrics["edit"]["rate"] <= 1 and len(metrics["edit"]["per_concept"]) == 13
    assert "knn" not in metrics and any("kNN" in note for note in metrics["notes"])  # concepts, no classes
    assert main(["eval", "--checkpoint", str(run), "--size", "8", "--mask-ratio", "0.5"]) == 0  # a run folder
    assert strict_json(run / "eval_shapes_test.json")["reconstruction"]["mask_ratio"] == 0.5


def test_eval_with_prior_thresholds(mcm_run, tmp_path, capsys):
    """--prior-threshold: per-concept cuts log((1 - f) / f) from the model's training frequencies; AUC unchanged."""
    run, _ = mcm_run
    plain, prior = tmp_path / "plain.json", tmp_path / "prior.json"
    assert main(["eval", "--checkpoint", str(run), "--size", "16", "--output", str(plain)]) == 0
    assert main(["eval", "--checkpoint", str(run), "--size", "16", "--prior-threshold", "--output", str(prior)]) == 0
    assert "logit > log((1 - f) / f)" in capsys.readouterr().out
    a, b = strict_json(plain)["concepts"], strict_json(prior)["concepts"]
    assert a["threshold"] == 0.0 and len(b["threshold"]) == 13
    freq = load_checkpoint(run / "checkpoint.safetensors")[0].cfg.concept_freq
    assert b["threshold"] == pytest.approx([math.log((1 - f) / f) for f in freq], abs=1e-5)
    assert a["macro"]["auc"] == pytest.approx(b["macro"]["auc"], nan_ok=True)


def test_edit_writes_a_png_grid(mcm_run, tmp_path, capsys):
    run, _ = mcm_run
    output = tmp_path / "grids" / "edit.png"
    code = main(["edit", "--checkpoint", str(run), "--concept", "circle", "--state", "1", "--count", "3",
                 "--output", str(output)])
    assert code == 0, capsys.readouterr().err
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(output) in capsys.readouterr().out
    assert main(["edit", "--checkpoint", str(run), "--concept", "5", "--state", "0", "--count", "2",
                 "--output", str(output)]) == 0  # by index


def test_edit_unknown_concept_lists_the_valid_names(mcm_run, capsys):
    run, _ = mcm_run
    assert main(["edit", "--checkpoint", str(run), "--concept", "circl", "--state", "1", "--output", "x.png"]) == 2
    err = capsys.readouterr().err
    assert "unknown concept 'circl'" in err and "did you mean 'circle'" in err and "noisy_background" in err
    assert main(["edit", "--checkpoint", str(run), "--concept", "13", "--state", "1", "--output", "x.png"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_mae_on_classes_until_resume_and_knn(tmp_path, capsys):
    """A non-concept model: reconstruction metrics, --until then --resume, kNN and probe on classes."""
    run = tmp_path / "mae"
    base = ["train", "--method", "mae", "--dataset", "digits", "--mask-ratio", "0.75", "--steps", "2",
            "--batch-size", "8", "--eval-size", "16", "--model", SMALL_MAE, "--no-progress", "--out-dir", str(run)]
    assert main(base + ["--until", "1"]) == 0
    assert strict_json(run / "metrics.json")["step"] == 1
    assert main(base + ["--resume", "--lr", "0.5"]) == 2  # another training setting: refused, nothing trained
    assert squash("trained with other settings (lr: 0.001 -> 0.5)") in squash(capsys.readouterr().err)
    assert main(["train", "--out-dir", str(run), "--resume", "--no-progress"]) == 0  # the run's own config.yaml
    assert "resuming from" in capsys.readouterr().out
    metrics = strict_json(run / "metrics.json")
    assert metrics["step"] == 2 and "concepts" not in metrics and metrics["reconstruction"]["psnr"] > 0
    assert metrics["split"] == "test"  # digits has no val split
    assert len((run / "history.jsonl").read_text().splitlines()) == 2
    assert main(["eval", "--checkpoint", str(run), "--knn", "--probe", "--size", "32", "--train-size", "64"]) == 0
    metrics = strict_json(run / "eval_digits_test.json")
    assert 0 <= metrics["knn"]["accuracy"] <= 1 and 0 <= metrics["probe"]["accuracy"] <= 1
    assert main(["edit", "--checkpoint", str(run), "--concept", "0", "--state", "1", "--output", "x.png"]) == 2
    assert "needs an MCM checkpoint" in capsys.readouterr().err


def test_mcm_on_class_data_reports_the_class_accuracy(tmp_path, capsys):
    """Classes are trained as one-hot concepts; eval also gives top-1 accuracy (argmax of the concept logits)."""
    run = tmp_path / "mcm_digits"
    assert main(["train", "--method", "mcm", "--dataset", "digits", "--steps", "2", "--batch-size", "8",
                 "--eval-size", "16", "--model", SMALL, "--no-progress", "--out-dir", str(run)]) == 0
    assert 0 <= strict_json(run / "metrics.json")["concepts"]["class_accuracy"] <= 1
    assert "class accuracy" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(run), "--size", "32"]) == 0
    accuracy = strict_json(run / "eval_digits_test.json")["concepts"]["class_accuracy"]
    assert f"class accuracy (argmax of the concept logits): {accuracy:.3f}" in capsys.readouterr().out
    shapes = tmp_path / "mcm_shapes"  # several concepts per image: no class accuracy
    assert main(["train", "--method", "mcm", "--steps", "1", "--batch-size", "8", "--eval-size", "16",
                 "--set", "data.size=32", "--model", SMALL, "--no-progress", "--out-dir", str(shapes)]) == 0
    assert "class_accuracy" not in strict_json(shapes / "metrics.json")["concepts"]


def test_supervised_reference_trains_and_reports_concepts_without_reconstruction(tmp_path):
    """The supervised model has concepts but no pixel decoder: concept metrics, a note, no crash."""
    run = tmp_path / "sup"
    code, out, err = run_cli(["train", "--method", "supervised", "--steps", "2", "--batch-size", "8",
                              "--eval-size", "16", "--set", "data.size=32", "--model", SMALL, "--no-progress",
                              "--out-dir", str(run)])
    assert code == 0, err
    metrics = strict_json(run / "metrics.json")
    assert 0 <= metrics["concepts"]["macro"]["f1"] <= 1 and "reconstruction" not in metrics
    assert any("no pixel decoder" in note for note in metrics["notes"])
    code, out, err = run_cli(["eval", "--checkpoint", str(run), "--size", "8"])
    assert code == 0, err
    assert "concepts" in strict_json(run / "eval_shapes_test.json") and "no pixel decoder" in out


def test_library_errors_during_training_are_clean(tmp_path, capsys):
    code = main(["train", "--set", "model.nosuch=1", "--set", "data.size=16", "--steps", "1", "--batch-size", "4",
                 "--no-progress", "--out-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "unknown option(s) ['nosuch'] for model 'mcm'" in err and "Traceback" not in err


def test_eval_and_edit_take_the_data_options_of_train(mcm_run, tmp_path, capsys):
    """An analyst's own folder of images: reconstruction metrics and an edit grid, no labels needed."""
    from PIL import Image

    folder = tmp_path / "pictures"
    folder.mkdir()
    for i, colour in enumerate(("red", "green", "navy", "orange")):
        Image.new("RGB", (48, 40), colour).save(folder / f"{i}.png")
    run, _ = mcm_run
    data = ["--dataset", "folder", "--data", f"{{root: {folder}, image_size: 32}}"]
    output = tmp_path / "eval.json"
    code = main(["eval", "--checkpoint", str(run), "--split", "all", *data, "--output", str(output)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "... reconstruction at mask ratio 0.25 on 4 images" in captured.err  # progress on stderr
    metrics = strict_json(output)
    assert metrics["dataset"] == "folder" and metrics["num_images"] == 4 and "reconstruction" in metrics
    assert "no concept metrics: folder has no labels" in metrics["notes"]
    png = tmp_path / "red.png"
    assert main(["edit", "--checkpoint", str(run), "--split", "all", *data, "--concept", "red", "--state", "1",
                 "--count", "4", "--output", str(png)]) == 0
    assert png.stat().st_size > 0
    assert main(["eval", "--checkpoint", str(run), "--data", "{size: many}"]) == 2
    assert "size must be a non-negative int, got 'many'" in capsys.readouterr().err
