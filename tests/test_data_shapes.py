"""Tests of the built-in shapes data: determinism, shapes, exact labels (pixels and factors)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mcm_core.data import CONCEPT_NAMES, ShapesDataset, concept_frequencies, generate_shapes
from mcm_core.data import shapes_render
from mcm_core.data.shapes import render_shapes
from mcm_core.data.shapes_factors import RADIUS_LARGE, RADIUS_SMALL, STROKE

C = {name: k for k, name in enumerate(CONCEPT_NAMES)}
SLOT_KEYS = ("present", "shape", "colour", "large", "cx", "cy", "fill")



def test_concept_names_exact_order():
    assert CONCEPT_NAMES == [
        "circle", "square", "triangle", "red", "green", "blue", "large", "left", "top",
        "hollow", "striped", "dark_background", "noisy_background",
    ]


def test_same_seed_same_data_and_different_seeds_differ():
    a, b = generate_shapes(64, seed=7), generate_shapes(64, seed=7)
    assert torch.equal(a.images, b.images) and torch.equal(a.object_masks, b.object_masks)
    assert torch.equal(a.concepts, b.concepts)
    c = generate_shapes(64, seed=8)
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.concepts, c.concepts)
    g = generate_shapes(64, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.images, g.images)


def test_unseeded_calls_follow_torch_manual_seed():
    torch.manual_seed(3)
    a = generate_shapes(8)
    torch.manual_seed(3)
    assert torch.equal(a.images, generate_shapes(8).images)


@pytest.mark.parametrize(("size", "n"), [(32, 16), (96, 6), (224, 3)])
def test_shapes_dtypes_and_ranges(size, n):
    b = generate_shapes(n, seed=1, image_size=size, max_objects=2)
    assert b.images.shape == (n, 3, size, size) and b.images.dtype == torch.float32
    assert b.concepts.shape == (n, len(CONCEPT_NAMES)) and b.concepts.dtype == torch.float32
    assert b.object_masks.shape == (n, size, size) and b.object_masks.dtype == torch.long
    assert 0 <= b.images.min() and b.images.max() <= 1
    assert set(b.concepts.unique().tolist()) <= {0.0, 1.0}
    assert 0 <= b.object_masks.min() and b.object_masks.max() <= 2
    assert torch.equal(b.images * 255, (b.images * 255).round())  # exact k / 255 values
    assert b.factors["noise"].shape == (n, 32, 32) and b.factors["cx"].shape == (n, 2)


def test_empty_batch_and_bad_arguments():
    assert generate_shapes(0, seed=0).images.shape == (0, 3, 32, 32)
    with pytest.raises(ValueError, match="image_size"):
        generate_shapes(2, seed=0, image_size=16)
    with pytest.raises(ValueError, match="min_objects"):
        generate_shapes(2, seed=0, min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="either seed= or generator="):
        generate_shapes(2, seed=0, generator=torch.Generator())
    assert generate_shapes(2, seed=0, return_factors=False).factors is None


def _expected_concepts(f: dict) -> torch.Tensor:
    """Labels recomputed object by object in plain Python."""
    n, m = f["present"].shape
    out = torch.zeros(n, len(CONCEPT_NAMES))
    for i in range(n):
        for j in range(m):
            if not f["present"][i, j]:
                continue
            on = [CONCEPT_NAMES[int(f["shape"][i, j])]]
            on += [["red", "green", "blue", "yellow"][int(f["colour"][i, j])]]
            on += [[None, "hollow", "striped"][int(f["fill"][i, j])]]
            on += ["large"] * bool(f["large"][i, j]) + ["left"] * bool(f["cx"][i, j] < 0.5)
            on += ["top"] * bool(f["cy"][i, j] < 0.5)
            for name in on:
                if name in C:
                    out[i, C[name]] = 1
        out[i, C["dark_background"]] = float(f["dark"][i])
        out[i, C["noisy_background"]] = float(f["noisy"][i])
    return out


@pytest.mark.parametrize("max_objects", [1, 3])
def test_concepts_agree_with_factors(max_objects):
    b = generate_shapes(200, seed=2, max_objects=max_objects)
    assert torch.equal(b.concepts, _expected_concepts(b.factors))
    count = b.factors["present"].sum(1)
    assert count.min() >= 1 and count.max() <= max_objects
    assert torch.equal(b.factors["present"], torch.arange(max_objects) < count[:, None])


def _bbox(region: torch.Tensor) -> tuple[float, float, float, float]:
    """(x centre, y centre, width, height) in pixels of a bool (H, W) region."""
    ys, xs = region.nonzero(as_tuple=True)
    x0, x1, y0, y1 = xs.min().item(), xs.max().item(), ys.min().item(), ys.max().item()
    return (x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2, x1 - x0 + 1, y1 - y0 + 1


def _check_colour(pixels: torch.Tensor, colour: str) -> None:
    """pixels: (3, P). All identical, saturated in the named colour."""
    assert (pixels == pixels[:, :1]).all()
    r, g, b = pixels[:, 0].tolist()
    want = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1), "yellow": (1, 1, 0)}[colour]
    for value, on in zip((r, g, b), want):
        assert (value > 0.6) if on else (value < 0.4), (colour, (r, g, b))


def _check_background(image: torch.Tensor, bg: torch.Tensor, dark: bool, noisy: bool) -> None:
    pixels = image[:, bg]  # (3, P)
    assert (pixels == pixels[:1]).all()  # grey
    base = 25 / 255 if dark else 225 / 255
    assert ((pixels - base).abs() <= 20 / 255 + 1e-6).all()
    assert (pixels.std() > 0.01) if noisy else bool((pixels == base).all())
    assert (pixels.mean() < 0.3) if dark else (pixels.mean() > 0.7)


@pytest.mark.parametrize("size", [32, 96])
def test_every_label_matches_the_pixels(size):
    b = generate_shapes(120, seed=11, image_size=size)
    colours = ["red", "green", "blue", "yellow"]
    for image, concepts, mask, f in zip(b.images, b.concepts, b.object_masks,
                                        _per_image(b.factors)):
        obj = mask == 1
        assert obj.any() and set(mask.unique().tolist()) <= {0, 1}
        colour = [c for c in ("red", "green", "blue") if concepts[C[c]]] or ["yellow"]
        assert colour[0] == colours[int(f["colour"][0])]
        _check_colour(image[:, obj], colour[0])
        _check_background(image, ~obj, bool(concepts[C["dark_background"]]),
                          bool(concepts[C["noisy_background"]]))
        x, y, w, h = _bbox(obj)
        assert abs(x - f["cx"][0] * size) <= 1 and abs(y - f["cy"][0] * size) <= 1
        if abs(x - size / 2) > 1.5:
            assert bool(concepts[C["left"]]) == (x < size / 2)
        if abs(y - size / 2) > 1.5:
            assert bool(concepts[C["top"]]) == (y < size / 2)
        assert bool(concepts[C["large"]]) == (w > (RADIUS_LARGE + RADIUS_SMALL) * size)
        if not concepts[C["hollow"]] and not concepts[C["striped"]]:
            _check_solid_shape(obj, concepts)


def _per_image(factors: dict) -> list[dict]:
    n = factors["present"].shape[0]
    return [{k: v[i] for k, v in factors.items()} for i in range(n)]


def _check_solid_shape(obj: torch.Tensor, concepts: torch.Tensor) -> None:
    """Area / bounding-box area: square ~1, circle ~pi/4, triangle ~1/2."""
    _, _, w, h = _bbox(obj)
    ratio = obj.sum().item() / (w * h)
    shape = "square" if ratio > 0.93 else "circle" if ratio > 0.66 else "triangle"
    assert concepts[C[shape]] == 1, (ratio, concepts)
    if shape == "triangle":  # apex on top: the top row is narrower than the bottom row
        rows = obj.nonzero()[:, 0]
        assert obj[rows.min()].sum() < obj[rows.max()].sum()


def _erode(region: torch.Tensor, k: int) -> torch.Tensor:
    """Pixels whose (2k+1)-square neighbourhood lies inside the bool (n, H, W) region
    (beyond the image border counts as outside)."""
    outside = F.pad((~region).float()[:, None], (k, k, k, k), value=1.0)
    return F.max_pool2d(outside, 2 * k + 1, stride=1)[:, 0] == 0


def test_fill_is_visible_in_the_pixels():
    size = 96
    b = generate_shapes(150, seed=5, image_size=size)
    f = b.factors
    solid = dict(f, fill=torch.zeros_like(f["fill"]))
    footprint = render_shapes(solid, size)[1] == 1  # (n, S, S)
    painted = b.object_masks == 1
    deep = _erode(footprint, math.ceil(STROKE * size) + 1)
    assert (painted <= footprint).all()
    for i, fill in enumerate(f["fill"][:, 0].tolist()):
        missing = footprint[i] & ~painted[i]
        assert (fill == 0) == (not missing.any())
        if fill == 1:  # hollow: only an outline, nothing deep inside
            assert not (painted[i] & deep[i]).any()
        if fill == 2 and bool(f["large"][i, 0]):  # striped: bands both on and off inside
            assert (painted[i] & deep[i]).any() and (missing & deep[i]).any()
            rows = (missing & deep[i]).any(1) & (painted[i] & deep[i]).any(1)
            assert not rows.any()  # whole rows are on or off inside: horizontal bands


def _slot(factors: dict, i: int) -> dict:
    """The factors of object slot i alone (same background)."""
    single = {k: factors[k][:, i:i + 1] for k in SLOT_KEYS}
    return dict(factors, **single)


def test_multi_object_masks_redraw_each_object_from_its_factors():
    size, m = 64, 3
    b = generate_shapes(40, seed=9, image_size=size, min_objects=2, max_objects=m)
    f = b.factors
    alone = [render_shapes(_slot(f, i), size)[1] == 1 for i in range(m)]  # each (n, S, S)
    for i in range(m):
        assert not (alone[i] & ~f["present"][:, i, None, None]).any()
        above = torch.zeros_like(alone[i])
        for j in range(i + 1, m):
            above |= alone[j]
        assert torch.equal(b.object_masks == i + 1, alone[i] & ~above)
    palette = ["red", "green", "blue", "yellow"]
    for n in range(len(b)):
        for i in range(m):
            visible = b.object_masks[n] == i + 1
            if visible.any():
                _check_colour(b.images[n][:, visible], palette[int(f["colour"][n, i])])


def test_small_objects_are_not_hidden_and_objects_rarely_vanish():
    b = generate_shapes(300, seed=4, min_objects=3, max_objects=3)
    visible = torch.stack([(b.object_masks == i + 1).flatten(1).any(1) for i in range(3)], 1)
    assert visible.float().mean() > 0.97
    large = b.factors["large"]
    assert not (large[:, 1:] & ~large[:, :-1]).any()  # large objects are drawn first


def test_single_object_redraw_matches_pixels_exactly():
    b = generate_shapes(12, seed=21, image_size=48)
    for i in range(len(b)):
        one = {k: v[i:i + 1] for k, v in b.factors.items()}
        images, masks = render_shapes(one, 48)
        assert torch.equal(images[0], b.images[i]) and torch.equal(masks[0], b.object_masks[i])


def test_rendering_does_not_depend_on_chunking(monkeypatch):
    b = generate_shapes(50, seed=6, max_objects=2)
    monkeypatch.setattr(shapes_render, "_CHUNK_PIXELS", 32 * 32 * 7)
    images, masks = render_shapes(b.factors, 32)
    assert torch.equal(images, b.images) and torch.equal(masks, b.object_masks)


def test_resolution_changes_pixels_not_labels():
    small = generate_shapes(20, seed=3, image_size=32)
    images, masks = render_shapes(small.factors, 64)
    for i in range(20):
        x32 = _bbox(small.object_masks[i] == 1)
        x64 = _bbox(masks[i] == 1)
        assert abs(x64[0] - 2 * x32[0]) <= 2 and abs(x64[2] - 2 * x32[2]) <= 3


@pytest.mark.parametrize(("lo", "hi"), [(1, 1), (1, 3)])
def test_concept_frequencies_match_empirical(lo, hi):
    prior = concept_frequencies(lo, hi)
    assert prior.shape == (len(CONCEPT_NAMES),)
    b = generate_shapes(4000, seed=12, min_objects=lo, max_objects=hi, return_factors=False)
    assert torch.allclose(b.concepts.mean(0), prior, atol=0.03)


def test_concept_frequencies_closed_form():
    single = concept_frequencies()
    expected = [1 / 3] * 3 + [1 / 4] * 3 + [1 / 2] * 3 + [1 / 4] * 2 + [1 / 2, 1 / 5]
    assert torch.allclose(single, torch.tensor(expected))
    two = concept_frequencies(2, 2)
    assert math.isclose(two[C["red"]].item(), 1 - 0.75**2, rel_tol=1e-6)
    assert math.isclose(two[C["noisy_background"]].item(), 0.2, rel_tol=1e-6)


def test_dataset_items_splits_and_batches():
    val = ShapesDataset("val", size=300, seed=0)
    assert len(val) == 300 and val.concept_names == CONCEPT_NAMES
    image, target = val[17]
    assert image.shape == (3, 32, 32) and target.shape == (13,) and target.dtype == torch.float32
    batch = val.batch([17, 3])
    assert torch.equal(batch.images[0], image) and torch.equal(batch.concepts[0], target)
    assert torch.equal(val.object_masks(17), batch.object_masks[0])
    assert val.object_masks([17, 3]).shape == (2, 32, 32)
    test = ShapesDataset("test", size=300, seed=0)
    assert not torch.equal(val.targets, test.targets)
    again = ShapesDataset("val", size=300, seed=0)
    assert torch.equal(again[17][0], image)
    uncached = ShapesDataset("val", size=300, seed=0, cache_limit_mb=0)
    assert not uncached.cached and torch.equal(uncached[17][0], image)
    assert torch.equal(uncached.batch(slice(0, 5)).images, val.batch(range(5)).images)
    assert torch.allclose(val.concept_frequencies(), val.targets.mean(0))


def test_dataset_defaults_big_images_and_errors():
    assert len(ShapesDataset("test")) == 2000 and len(ShapesDataset("val")) == 2000
    big = ShapesDataset("train", image_size=224)  # 20000 x 224 px: rendered on demand
    assert len(big) == 20000 and not big.cached
    image, _ = big[19999]
    assert image.shape == (3, 224, 224)
    with pytest.raises(ValueError, match="unknown split"):
        ShapesDataset("validation")
    with pytest.raises(IndexError):
        ShapesDataset("val", size=10)[10]


def test_dataset_works_with_a_dataloader():
    ds = ShapesDataset("val", size=64, seed=1)
    images, targets = next(iter(torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True)))
    assert images.shape == (16, 3, 32, 32) and targets.shape == (16, 13)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_and_cuda_give_identical_data():
    cpu = generate_shapes(256, seed=5, image_size=64, max_objects=3)
    gpu = generate_shapes(256, seed=5, image_size=64, max_objects=3, device="cuda")
    assert gpu.images.is_cuda
    assert torch.equal(cpu.images, gpu.images.cpu())
    assert torch.equal(cpu.object_masks, gpu.object_masks.cpu())
    assert torch.equal(cpu.concepts, gpu.concepts.cpu())
