"""torch.compile on the GPU's code path, checked on the CPU: one graph per method, no recompiles,
and the compiled model trains like the eager one (benchmarks/compile_check.py)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def check(benchmark_script):
    return benchmark_script("compile_check")


def test_the_gpu_path_copy_turns_off_every_cpu_only_check_and_still_imports(check, tmp_path):
    replaced = check.gpu_path_copy(tmp_path)
    package = tmp_path / "mcm_core"
    assert replaced >= 6  # the mask, concept and MiCL checks and the masker's exact compaction
    for path in check.checked_files(package):
        assert not check.CPU_TEST.search(path.read_text()), path
    done = subprocess.run([sys.executable, "-c", "import mcm_core.models, mcm_core; print(mcm_core.__file__)"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(package))


def test_the_gpu_path_trainer_keeps_the_fused_attention_a_gpu_compiles(check, tmp_path, monkeypatch):
    """On a CPU every training step uses explicit attention; a GPU's does not, so neither does the GPU path."""
    monkeypatch.delenv(check.CHILD_ENV, raising=False)
    assert check.make_trainer("mae", "tiny", 4, 0, str(tmp_path / "cpu")).explicit_attention is True
    monkeypatch.setenv(check.CHILD_ENV, str(tmp_path))
    assert check.make_trainer("mae", "tiny", 4, 0, str(tmp_path / "gpu")).explicit_attention is False


def test_a_missing_check_pattern_is_an_error_that_says_what_to_update(check, tmp_path):
    source = tmp_path / "src"
    (source / "models").mkdir(parents=True)
    (source / "models" / "m.py").write_text("x = 1\n")
    (source / "masking").mkdir()
    (source / "masking" / "simple.py").write_text("y = 2\n")
    with pytest.raises(RuntimeError, match="update CPU_TEST"):
        check.gpu_path_copy(tmp_path / "dest", source=source)


def test_bad_arguments_are_refused(check, capsys):
    with pytest.raises(SystemExit):
        check.main(["--batch-size", "1"])
    assert "--batch-size must be at least 2" in capsys.readouterr().err


def test_reset_compile_zeroes_the_counters_that_dynamo_reset_keeps(check):
    from torch._dynamo.utils import counters

    counters["graph_break"]["Unsupported Tensor.item() call"] += 1
    counters["stats"]["unique_graphs"] += 2
    assert check.compile_stats()["graph_breaks"] >= 1
    check.reset_compile()
    assert check.compile_stats() == {"unique_graphs": 0, "graph_breaks": 0, "break_reasons": [], "recompiles": 0}


def test_break_reason_keeps_the_title_and_what_dynamo_could_not_trace(check):
    message = "Unsupported Tensor.item() call\n  Explanation: ...\n\n  Developer debug context: call_method item\n"
    assert check.break_reason(message) == "Unsupported Tensor.item() call | call_method item"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mae", "mcm", "micl", "latent_mim"])
def test_the_compiled_gpu_path_is_one_graph_and_trains_like_eager(check, method, tmp_path):
    out = tmp_path / "compile.jsonl"
    # aot_eager: dynamo's graphs and breaks and the AOT-autograd backward, without inductor's C++ build (minutes)
    [row] = check.main(["--methods", method, "--steps", "2", "--threads", "1", "--backend", "aot_eager",
                        "--out", str(out)])
    assert [json.loads(line) for line in out.read_text().splitlines()] == [row]
    assert row["path"] == "gpu" and row["method"] == method and row["backend"] == "aot_eager"
    assert row["recompiles"] == 0
    if method == "micl":
        # Known and cheap: dynamo cannot trace torch.rand(generator=...), the view split's noise at the start
        # of the forward; the rest of the model is one graph.
        assert row["graph_breaks"] <= 2 and row["unique_graphs"] == 2
        assert all("Generator" in reason for reason in row["break_reasons"]), row["break_reasons"]
    else:  # no .item(), no data-dependent branch: a graph break here would also be a GPU synchronization
        assert (row["unique_graphs"], row["graph_breaks"]) == (1, 0), row["break_reasons"]
    assert row["max_loss_diff"] < 1e-4 * max(1.0, abs(row["losses_eager"][0]))
    assert row["losses_compiled"][-1] != row["losses_compiled"][0]  # it trained
