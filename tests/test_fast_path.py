"""The GPU fast path: no host synchronization inside the training step, masks and data on the device.

The CPU tests prove what they can without a GPU: the whole step's device work runs on the
``meta`` device, which has no values, so any read-back (``.item()``, ``bool(tensor)``, a boolean
index, ``nonzero``) would fail there. The ``gpu`` tests check the same on a CUDA device with
``torch.cuda.set_sync_debug_mode("error")`` and compare CUDA results with the CPU's.
"""
from __future__ import annotations

import contextlib
import copy
import tempfile

import pytest
import torch

from mcm_core.config import TrainConfig
from mcm_core.data.shapes_render import u8_to_float
from mcm_core.masking import block_mask, ids_from_mask, make_masker, num_hidden, random_mask
from mcm_core.models import build_model
from mcm_core.models.backbone import mask_ids
from mcm_core.models.layers import ema_update
from mcm_core.optim import param_groups
from mcm_core.train import Trainer

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
# (method, training mask ratio, model overrides): every method, and the switches with their own code paths.
SETTINGS = [("mae", 0.75, {}), ("mcm", 0.25, {}), ("mcm", 0.0, {"disentangle_weight": 0.5}), ("micl", 0.75, {}),
            ("latent_mim", 0.75, {}), ("latent_mim", 0.75, {"patch_gap": 2, "decoder": "mae", "sim_reg_weight": 1.0})]
IDS = [f"{m}-{r}-{'-'.join(o) or 'default'}" for m, r, o in SETTINGS]


def trainer(tmp_path, method: str, mask_ratio: float, device: str, **fields) -> Trainer:
    cfg = TrainConfig(method=method, mask_ratio=mask_ratio, steps=10, batch_size=16, data={"size": 64},
                      device=device, progress=False, out_dir=str(tmp_path), **fields)
    return Trainer(cfg)


# ---------------------------------------------------------------------- CPU
@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.75, 0.9])
def test_mask_ids_without_read_back_equal_ids_from_mask(ratio):
    gen = torch.Generator().manual_seed(0)
    affinity = torch.rand(6, 64, 64, generator=gen)
    masks = [random_mask(6, 64, ratio, generator=gen), block_mask(6, (8, 8), ratio, generator=gen),
             make_masker("hierarchical", (8, 8))(6, ratio, generator=gen, affinity=affinity, progress=0.5)]
    for mask in masks:
        expected = ids_from_mask(mask)
        fast = mask_ids(mask, num_hidden(64, ratio), check=False)
        assert all(torch.equal(a, b) for a, b in zip(expected, fast))


@pytest.fixture
def meta_autocast(monkeypatch):
    """torch.autocast has no meta backend; the losses switch it off around float32 maths: a no-op there."""
    real = torch.autocast

    def autocast(device_type, *args, **kwargs):
        return contextlib.nullcontext() if device_type == "meta" else real(device_type, *args, **kwargs)

    monkeypatch.setattr(torch, "autocast", autocast)


@pytest.mark.parametrize("method, ratio, overrides", SETTINGS, ids=IDS)
def test_the_step_reads_nothing_back(meta_autocast, method, ratio, overrides):
    """Forward (mask given with its ratio, as the trainer does, or drawn by the model), backward, clip,
    AdamW, EMA and the model's after_step, all on the meta device: no value is ever read back."""
    with torch.device("meta"):
        model = build_model(method, "tiny", mask_ratio=ratio, **overrides)
        images, concepts = torch.rand(4, 3, 32, 32), torch.randint(0, 2, (4, 13)).float()
        mask = random_mask(4, 64, ratio, device="meta")
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3, foreach=True)
    ema = copy.deepcopy(model.encoder)
    for given in (mask, None):
        out = model(images, mask=given, mask_ratio=ratio, concepts=concepts if method == "mcm" else None)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema_update(ema, model.encoder, 0.99)
        if hasattr(model, "after_step"):
            model.after_step(0.5)
        assert out.loss.device.type == "meta" and all(v.device.type == "meta" for v in out.losses.values())


@pytest.mark.parametrize("kind", ["tokens", "attention"])
def test_hierarchical_masking_reads_nothing_back_without_its_finiteness_check(kind):
    """The EMA encoder's affinity, the tree, the cut and the node mask, on the meta device."""
    with torch.device("meta"):
        model = build_model("mae", "tiny")
        images = torch.rand(4, 3, 32, 32)
    affinity = model.encoder.patch_affinity(images, kind=kind)
    for adjacency in (True, False):
        masker = make_masker("hierarchical", (8, 8), adjacency=adjacency, check_finite=False)
        mask = masker(4, 0.75, affinity=affinity, progress=0.5, generator=None)
        assert mask.device.type == "meta" and mask.shape == (4, 64) and mask.dtype == torch.bool


def test_device_batches_equal_the_dataloader(tmp_path):
    for data in ({"size": 40}, {"size": 40, "cache_limit_mb": 0}):  # cached and rendered on demand
        t = Trainer(TrainConfig(method="mcm", steps=6, batch_size=16, data=data, device="cpu", progress=False,
                                out_dir=str(tmp_path)))
        loader, direct = list(t.batches(6, on_device=False)), list(t.batches(6, on_device=True))
        assert len(loader) == len(direct) == 6
        for (a_images, a_targets), (b_images, b_targets) in zip(loader, direct):
            assert torch.equal(a_images, b_images) and torch.equal(a_targets, b_targets)


def test_u8_to_float_is_correctly_rounded():
    k = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(u8_to_float(k), (k.double() / 255).float())


# ---------------------------------------------------------------------- GPU
@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("method, ratio, overrides", SETTINGS, ids=IDS)
def test_cuda_train_step_never_synchronizes(tmp_path, method, ratio, overrides):
    t = trainer(tmp_path, method, ratio, "cuda", model=dict(overrides))
    gen = torch.Generator(device="cuda").manual_seed(0)
    images = torch.rand(16, 3, 32, 32, device="cuda", generator=gen)
    targets = torch.randint(0, 2, (16, 13), device="cuda", generator=gen).float()
    for _ in range(2):  # first steps: optimizer state, lazy initialisation
        t.train_step(images, targets)
        t.step += 1
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            metrics = t.train_step(images, targets)
            t.step += 1
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(v.is_cuda for v in metrics.values()) and torch.isfinite(metrics["loss"]).item()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("method", ["mae", "mcm"])
def test_cuda_hierarchical_step_never_synchronizes_and_masks_like_the_cpu(tmp_path, method):
    t = trainer(tmp_path, method, 0.5, "cuda", masking="hierarchical")
    assert not t.masker.check_finite  # the loss check covers a non-finite affinity on a GPU
    gen = torch.Generator(device="cuda").manual_seed(0)
    images = torch.rand(16, 3, 32, 32, device="cuda", generator=gen)
    targets = torch.randint(0, 2, (16, 13), device="cuda", generator=gen).float()
    t.train_step(images, targets)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        t.train_step(images, targets)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    affinity = torch.rand(8, 64, 64, generator=torch.Generator().manual_seed(3))
    masker = make_masker("hierarchical", (8, 8))
    on_cpu = masker.sample(affinity, 0.5, 0.5, torch.Generator().manual_seed(4))
    on_gpu = masker.sample(affinity.cuda(), 0.5, 0.5, torch.Generator(device="cuda").manual_seed(4))
    assert torch.equal(on_gpu.labels.cpu(), on_cpu.labels)  # the same tree and cut (the node order may differ)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("method, ratio, overrides", SETTINGS, ids=IDS)
def test_cuda_forward_matches_cpu(method, ratio, overrides, monkeypatch):
    """Same weights, mask and views: the trusted-count path on the GPU gives the CPU's losses (float32)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    model = build_model(method, "tiny", mask_ratio=ratio, **overrides)
    images, concepts = torch.rand(8, 3, 32, 32), torch.randint(0, 2, (8, 13)).float()
    mask = random_mask(8, 64, ratio, generator=torch.Generator().manual_seed(1))
    outputs = []
    for device, m in (("cpu", model), ("cuda", copy.deepcopy(model).cuda())):
        out = m(images.to(device), mask=mask.to(device), mask_ratio=ratio,
                concepts=concepts.to(device) if method == "mcm" else None,
                generator=torch.Generator().manual_seed(2))  # CPU generator: same views / gaps on both
        outputs.append({"loss": out.loss.detach().cpu(), **{k: v.cpu() for k, v in out.losses.items()}})
    cpu, cuda = outputs
    assert cpu.keys() == cuda.keys()
    for key in cpu:  # accuracies count argmax hits: a near-tie may flip one of them
        atol = 0.02 if key.endswith("_acc") else 1e-4
        torch.testing.assert_close(cuda[key].float(), cpu[key].float(), rtol=1e-3, atol=atol, msg=key)


@pytest.mark.gpu
@needs_cuda
def test_cuda_device_batches_equal_the_cpu_dataloader(tmp_path):
    gpu = Trainer(TrainConfig(method="mcm", steps=4, batch_size=32, data={"size": 128, "image_size": 64},
                              preset="small", device="cuda", progress=False, out_dir=str(tmp_path)))
    cpu = Trainer(TrainConfig(method="mcm", steps=4, batch_size=32, data={"size": 128, "image_size": 64},
                              preset="small", device="cpu", progress=False, out_dir=str(tmp_path)))
    on_gpu, on_cpu = list(gpu.batches(4)), list(cpu.batches(4))  # the GPU renders; the CPU uses its DataLoader
    assert gpu.device_data() is not None and on_gpu[0][0].is_cuda
    for (a_images, a_targets), (b_images, b_targets) in zip(on_gpu, on_cpu):
        assert torch.equal(a_images.cpu(), b_images) and torch.equal(a_targets.cpu(), b_targets)


@pytest.mark.gpu
@needs_cuda
def test_cuda_u8_to_float_equals_cpu():
    k = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(u8_to_float(k.cuda()).cpu(), u8_to_float(k))


@pytest.mark.gpu
@needs_cuda
def test_bench_train_runs_on_cuda(capsys, benchmark_script):
    bench = benchmark_script("bench_train")
    with tempfile.TemporaryDirectory() as out:
        rows = bench.main(["--device", "cuda", "--presets", "tiny", "--batch-size", "16", "--steps", "2",
                           "--warmup", "1", "--out", f"{out}/b.jsonl"])
    assert [r["method"] for r in rows] == ["mae", "mcm", "micl", "latent_mim"]
    for row in rows:
        assert row["precision"] == "bf16" and row["peak_mem_gib"] > 0 and row["gflop_per_image"] > 0
        assert "peak_rss_mib" not in row and row["device"] == torch.cuda.get_device_name()
