"""Tests of the real-data loaders and of load_dataset, on tiny fixtures written in tmp."""
from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mcm_core.data import DATASET_NAMES, load_dataset
from mcm_core.data.celeba import CELEBA_ATTRIBUTES_DEFAULT
from mcm_core.data.idx import parse_idx, read_idx
from mcm_core.data.real import FASHION_MNIST_CLASSES, FASHION_MNIST_ROOTS

CELEBA_NAMES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses "
    "Goatee Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache "
    "Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks "
    "Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick "
    "Wearing_Necklace Wearing_Necktie Young"
).split()



def _idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array, written by hand (independent of the reader)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_fashion(root: Path, n: int, gz: bool, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    for name, array in ((f"{prefix}-images-idx3-ubyte", images),
                        (f"{prefix}-labels-idx1-ubyte", labels)):
        data = _idx_bytes(array)
        path = root / (name + ".gz" if gz else name)
        path.write_bytes(gzip.compress(data) if gz else data)
    return images, labels


def test_idx_parser_raw_gzip_and_errors(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "raw").write_bytes(_idx_bytes(array))
    (tmp_path / "packed.gz").write_bytes(gzip.compress(_idx_bytes(array)))
    assert np.array_equal(read_idx(tmp_path / "raw"), array)
    assert np.array_equal(read_idx(tmp_path / "packed.gz"), array)
    ints = bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 2) + struct.pack(">2i", -5, 70000)
    assert parse_idx(ints).tolist() == [-5, 70000]
    with pytest.raises(ValueError, match="not an IDX file"):
        parse_idx(b"\x01\x02\x08\x01")
    with pytest.raises(ValueError, match="truncated"):
        parse_idx(_idx_bytes(array)[:-1])


def test_fashion_mnist_from_fixture_raw_and_gz(tmp_path):
    train_x, train_y = _write_fashion(tmp_path, 5, gz=False, prefix="train")
    test_x, test_y = _write_fashion(tmp_path, 3, gz=True, prefix="t10k")
    train = load_dataset("fashion_mnist", "train", root=tmp_path)
    test = load_dataset("fashion_mnist", "test", root=str(tmp_path))
    assert len(train) == 5 and len(test) == 3 and train.classes == FASHION_MNIST_CLASSES
    image, label = train[2]
    assert image.shape == (3, 28, 28) and image.dtype == torch.float32
    assert torch.equal(image[0], torch.from_numpy(train_x[2]).float() / 255)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert isinstance(label, int) and label == train_y[2]
    assert test[1][1] == test_y[1]
    big = load_dataset("fashion_mnist", root=tmp_path, image_size=32)[0][0]
    assert big.shape == (3, 32, 32) and 0 <= big.min() and big.max() <= 1


def test_fashion_mnist_missing_files_error(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("fashion_mnist", root=tmp_path / "nowhere")
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "train-images-idx3-ubyte") in message
    assert "apt-get install dataset-fashion-mnist" in message and "root=" in message
    with pytest.raises(ValueError, match="unknown split"):
        load_dataset("fashion_mnist", "val", root=tmp_path)


DEBIAN = Path(FASHION_MNIST_ROOTS[0])


@pytest.mark.skipif(not (DEBIAN / "t10k-images-idx3-ubyte.gz").exists()
                    and not (DEBIAN / "t10k-images-idx3-ubyte").exists(),
                    reason="Debian package dataset-fashion-mnist is not installed")
def test_fashion_mnist_debian_files():
    test = load_dataset("fashion_mnist", "test")
    assert len(test) == 10000
    assert sorted(test.targets.unique().tolist()) == list(range(10))
    assert torch.bincount(test.targets).tolist() == [1000] * 10
    image, label = test[0]
    assert image.shape == (3, 28, 28) and 0 <= image.min() and image.max() <= 1
    assert test.classes[label] == "Ankle boot"  # the first test image


def test_digits_split_and_values():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(train) + len(test) == 1797 and len(test) == 360
    assert train.classes == [str(d) for d in range(10)]
    image, label = train[0]
    assert image.shape == (3, 32, 32) and 0 <= image.min() and image.max() <= 1
    assert torch.equal(image[0], image[2]) and isinstance(label, int)
    share = torch.bincount(test.targets, minlength=10).float() / len(test)
    assert (share - 0.1).abs().max() < 0.01  # stratified
    again = load_dataset("digits", "test")
    assert torch.equal(again.targets, test.targets) and torch.equal(again[5][0], test[5][0])
    assert load_dataset("digits", image_size=8)[0][0].shape == (3, 8, 8)


def _write_celeba(root: Path, count: int = 6) -> np.ndarray:
    """The exact CelebA layout, tiny: 178 x 218 JPEGs (grey top band, red centre)."""
    images = root / "img_align_celeba"
    images.mkdir(parents=True)
    rng = np.random.default_rng(1)
    values = rng.choice([-1, 1], size=(count, len(CELEBA_NAMES)))
    lines = [str(count), " ".join(CELEBA_NAMES)]
    for i in range(count):
        name = f"{i + 1:06d}.jpg"
        pixels = np.zeros((218, 178, 3), dtype=np.uint8)
        pixels[:, :] = (200, 30, 30)
        pixels[:20] = pixels[-20:] = (0, 0, 255)  # cropped away by the 178 x 178 centre crop
        Image.fromarray(pixels).save(images / name, quality=95)
        lines.append(name + " " + " ".join(f"{v:2d}" for v in values[i]))
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    parts = [0, 0, 0, 0, 1, 2][:count]
    (root / "list_eval_partition.txt").write_text(
        "".join(f"{i + 1:06d}.jpg {p}\n" for i, p in enumerate(parts)))
    return values


def test_celeba_fixture(tmp_path):
    values = _write_celeba(tmp_path)
    train = load_dataset("celeba", "train", root=tmp_path)
    assert len(train) == 4 and train.concept_names == list(CELEBA_ATTRIBUTES_DEFAULT)
    image, target = train[1]
    assert image.shape == (3, 64, 64) and target.shape == (11,) and target.dtype == torch.float32
    columns = [CELEBA_NAMES.index(a) for a in CELEBA_ATTRIBUTES_DEFAULT]
    assert torch.equal(target, torch.tensor(values[1, columns] > 0, dtype=torch.float32))
    assert image[0].min() > 0.6 and image[2].max() < 0.3  # red only: the blue bands are cropped
    val = load_dataset("celeba", "val", root=tmp_path, attributes=["Male", "Smiling"],
                       image_size=32)
    assert len(val) == 1 and val.concept_names == ["Male", "Smiling"]
    image, target = val[0]
    male, smiling = CELEBA_NAMES.index("Male"), CELEBA_NAMES.index("Smiling")
    assert image.shape == (3, 32, 32)
    assert target.tolist() == [float(values[4, male] > 0), float(values[4, smiling] > 0)]
    assert len(load_dataset("celeba", "test", root=tmp_path)) == 1


def test_celeba_errors(tmp_path):
    _write_celeba(tmp_path)
    with pytest.raises(ValueError) as err:
        load_dataset("celeba", root=tmp_path, attributes=["Smiling", "Wearing_Cape"])
    assert "Wearing_Cape" in str(err.value) and "Wearing_Hat" in str(err.value)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset("celeba", root=tmp_path / "nowhere")
    (tmp_path / "list_eval_partition.txt").unlink()
    with pytest.raises(FileNotFoundError, match="list_eval_partition.txt"):
        load_dataset("celeba", root=tmp_path)


def test_folder_fixture(tmp_path):
    (tmp_path / "b" / "deeper").mkdir(parents=True)
    wide = np.zeros((20, 40, 3), dtype=np.uint8)
    wide[:, :] = (0, 255, 0)
    wide[:, 10:30] = (255, 0, 0)  # the centred 20 x 20 square is all red
    Image.fromarray(wide).save(tmp_path / "b" / "deeper" / "wide.png")
    Image.fromarray(np.full((8, 8), 128, dtype=np.uint8)).save(tmp_path / "a.bmp")
    Image.fromarray(np.zeros((10, 10, 3), dtype=np.uint8)).save(tmp_path / "b" / "c.JPG")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = load_dataset("folder", root=tmp_path, image_size=16)
    names = [p.relative_to(tmp_path).as_posix() for p in ds.paths]
    assert names == ["a.bmp", "b/c.JPG", "b/deeper/wide.png"]
    image, target = ds[2]
    assert target == -1 and image.shape == (3, 16, 16)
    assert image[0].min() > 0.95 and image[1].max() < 0.05
    grey, _ = ds[0]
    assert torch.allclose(grey, torch.full((3, 16, 16), 128 / 255), atol=1 / 255)


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("folder", root=tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no images"):
        load_dataset("folder", root=tmp_path)
    with pytest.raises(ValueError, match="root="):
        load_dataset("folder")


def test_load_dataset_names_and_options():
    assert DATASET_NAMES == ("shapes", "fashion_mnist", "digits", "celeba", "folder")
    with pytest.raises(ValueError) as err:
        load_dataset("imagenet")
    assert "imagenet" in str(err.value) and "fashion_mnist" in str(err.value)
    with pytest.raises(TypeError) as err:
        load_dataset("shapes", imgsize=64)
    assert "imgsize" in str(err.value) and "image_size" in str(err.value)
    shapes = load_dataset("shapes", "val", size=8, image_size=48)
    assert shapes[0][0].shape == (3, 48, 48) and len(shapes.concept_names) == 13


def test_imports_and_builds_without_network(tmp_path):
    """socket.socket becomes a subclass whose constructor raises (a plain function would
    break ``import ssl``, which subclasses it, and with it ``import torch``)."""
    code = textwrap.dedent("""
        import socket

        class _NoNetwork(socket.socket):
            def __init__(self, *args, **kwargs):
                raise OSError("network access attempted")

        def _refuse(*args, **kwargs):
            raise OSError("network access attempted")

        socket.socket = _NoNetwork
        socket.create_connection = _refuse
        socket.getaddrinfo = _refuse

        import torch
        from mcm_core.data import generate_shapes, load_dataset
        batch = generate_shapes(8, seed=0)
        digits = load_dataset("digits", "test")
        assert batch.images.shape == (8, 3, 32, 32) and len(digits) == 360
        print("offline ok")
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "offline ok" in done.stdout
