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


# ----------------------------------------------------------------- real images: decoding
def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _two_halves(w: int, h: int) -> np.ndarray:
    """(h, w, 3) uint8: left half red, right half blue."""
    pixels = np.zeros((h, w, 3), dtype=np.uint8)
    pixels[:, : w // 2] = (255, 0, 0)
    pixels[:, w // 2:] = (0, 0, 255)
    return pixels


def _png16(array: np.ndarray, colour_type: int, extra: bytes = b"") -> bytes:
    """A 16-bit PNG written by hand (Pillow cannot save 16-bit colour). array: (H, W[, C]) uint16."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w = array.shape[:2]
    rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))
    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + extra + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def test_exif_orientation_applied(tmp_path):
    from mcm_core.data.imageops import load_rgb, read_image

    # Orientation 6: the stored picture must turn 90 degrees clockwise to stand upright,
    # so the stored left half (red) ends on top of a portrait image.
    Image.fromarray(_two_halves(40, 20)).save(tmp_path / "phone.png", exif=_exif(6))
    upright = read_image(tmp_path / "phone.png")
    assert upright.shape == (3, 40, 20)
    assert upright[0, :20].min() == 1 and upright[2, :20].max() == 0  # top: red
    assert upright[2, 20:].min() == 1 and upright[0, 20:].max() == 0  # bottom: blue
    # A JPEG decoded at reduced scale (draft) and centre-cropped after turning upright.
    Image.fromarray(_two_halves(320, 160)).save(tmp_path / "phone.jpg", exif=_exif(6), quality=95)
    image = load_rgb(tmp_path / "phone.jpg", 16)
    assert image.shape == (3, 16, 16)
    assert image[0, :6].min() > 0.8 and image[2, :6].max() < 0.2
    assert image[2, -6:].min() > 0.8 and image[0, -6:].max() < 0.2
    # All eight orientations, by the EXIF definitions (numpy on (H, W, C) arrays).
    stored = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    upright_of = {
        1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1),
    }
    for orientation, upright_fn in upright_of.items():
        path = tmp_path / f"o{orientation}.png"
        Image.fromarray(stored).save(path, exif=_exif(orientation))
        expected = torch.from_numpy(upright_fn(stored).copy()).permute(2, 0, 1) / 255
        assert torch.equal(read_image(path), expected), orientation


def test_bit_depths_scaled_to_unit_range(tmp_path):
    from mcm_core.data.imageops import read_image

    Image.fromarray(np.full((4, 6), 32768, dtype=np.uint16)).save(tmp_path / "grey16.png")
    assert torch.allclose(read_image(tmp_path / "grey16.png"), torch.tensor(32768 / 65535))  # not 1.0
    Image.fromarray(np.full((4, 6), 16384, dtype=np.uint16)).save(tmp_path / "grey16.tif")
    assert torch.allclose(read_image(tmp_path / "grey16.tif"), torch.tensor(0.25), atol=1e-4)
    Image.fromarray(np.full((3, 3), 2**30, dtype=np.int32)).save(tmp_path / "int32.tif")
    assert torch.allclose(read_image(tmp_path / "int32.tif"), torch.tensor(0.5), atol=1e-6)
    Image.fromarray(np.full((3, 3), 0.25, dtype=np.float32)).save(tmp_path / "float.tif")
    assert torch.allclose(read_image(tmp_path / "float.tif"), torch.tensor(0.25))
    # 16-bit PGM with maxval 4000: 1000 is a quarter of full scale.
    (tmp_path / "deep.pgm").write_bytes(b"P5\n2 2\n4000\n" + np.full(4, 1000, ">u2").tobytes())
    assert torch.allclose(read_image(tmp_path / "deep.pgm"), torch.tensor(0.25), atol=1e-4)
    # 16-bit colour PNG: Pillow keeps the high byte of each sample: 8-bit precision, right scale.
    rgb = np.zeros((2, 3, 3), dtype=np.uint16)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 65535, 32768, 257
    (tmp_path / "rgb16.png").write_bytes(_png16(rgb, colour_type=2))
    assert torch.allclose(read_image(tmp_path / "rgb16.png")[:, 0, 0],
                          torch.tensor([1.0, 32768 / 65535, 257 / 65535]), atol=1 / 255)
    # ... with alpha 0 composited on white, and with EXIF orientation like Pillow's.
    rgba = np.concatenate([rgb, np.zeros((2, 3, 1), dtype=np.uint16)], axis=-1)
    (tmp_path / "rgba16.png").write_bytes(_png16(rgba, colour_type=6))
    assert torch.equal(read_image(tmp_path / "rgba16.png"), torch.ones(3, 2, 3))
    ramp = (np.arange(2 * 3 * 3).reshape(2, 3, 3) * 3000).astype(np.uint16)
    raw_exif = _exif(6).tobytes()
    raw_exif = raw_exif[6:] if raw_exif.startswith(b"Exif\x00\x00") else raw_exif
    eXIf = struct.pack(">I", len(raw_exif)) + b"eXIf" + raw_exif
    import zlib
    eXIf += struct.pack(">I", zlib.crc32(b"eXIf" + raw_exif))
    (tmp_path / "turned16.png").write_bytes(_png16(ramp, colour_type=2, extra=eXIf))
    expected = torch.from_numpy(np.rot90(ramp, -1) / 65535).permute(2, 0, 1).float()
    turned = read_image(tmp_path / "turned16.png")
    assert turned.shape == (3, 3, 2) and torch.allclose(turned, expected, atol=1 / 255)


def test_modes_palette_grey_alpha(tmp_path):
    from mcm_core.data.imageops import ALPHA_BACKGROUND, read_image

    assert ALPHA_BACKGROUND == (1.0, 1.0, 1.0)
    Image.fromarray(np.full((3, 3), 64, dtype=np.uint8)).save(tmp_path / "grey.png")
    assert torch.allclose(read_image(tmp_path / "grey.png"), torch.tensor(64 / 255))
    Image.new("1", (3, 3), 1).save(tmp_path / "bits.png")
    assert torch.equal(read_image(tmp_path / "bits.png"), torch.ones(3, 3, 3))
    palette = Image.new("P", (4, 2))
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((0, 0), 1)  # green; the rest index 0 = red
    palette.save(tmp_path / "palette.png")
    image = read_image(tmp_path / "palette.png")
    assert image[:, 0, 0].tolist() == [0, 1, 0] and image[:, 1, 3].tolist() == [1, 0, 0]
    palette.save(tmp_path / "palette_key.png", transparency=0)  # red is transparent
    image = read_image(tmp_path / "palette_key.png")
    assert image[:, 0, 0].tolist() == [0, 1, 0] and image[:, 1, 3].tolist() == [1, 1, 1]
    half = np.zeros((2, 2, 4), dtype=np.uint8)
    half[..., 0], half[..., 3] = 255, 128  # red at alpha 128/255 over white
    Image.fromarray(half, "RGBA").save(tmp_path / "rgba.png")
    a = 128 / 255
    assert torch.allclose(read_image(tmp_path / "rgba.png")[:, 0, 0], torch.tensor([1, 1 - a, 1 - a]),
                          atol=1e-6)
    Image.fromarray(np.stack([np.zeros((2, 2)), np.zeros((2, 2))], -1).astype(np.uint8), "LA").save(
        tmp_path / "grey_alpha.png")  # black, fully transparent
    assert torch.equal(read_image(tmp_path / "grey_alpha.png"), torch.ones(3, 2, 2))
    Image.new("CMYK", (2, 2), (0, 255, 0, 0)).save(tmp_path / "cmyk.tif")  # magenta ink
    assert read_image(tmp_path / "cmyk.tif")[:, 0, 0].tolist() == [1, 0, 1]


def test_folder_formats_hidden_files_and_extensions(tmp_path):
    from mcm_core.data.real import IMAGE_EXTENSIONS

    assert {".tif", ".tiff", ".gif", ".png", ".jpg", ".webp", ".bmp"} <= set(IMAGE_EXTENSIONS)
    assert ".pdf" not in IMAGE_EXTENSIONS and ".h5" not in IMAGE_EXTENSIONS  # Pillow cannot decode them
    Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8)).save(tmp_path / "scan.tif")
    Image.fromarray(np.full((8, 8, 3), 50, dtype=np.uint8)).save(tmp_path / "anim.gif")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(40))
    (tmp_path / "._scan.tif").write_bytes(b"\x00\x05\x16\x07" + bytes(60))  # AppleDouble, not a TIFF
    (tmp_path / ".thumbnails").mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / ".thumbnails" / "t.png")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    with pytest.warns(UserWarning, match=r"(?s)cannot decode.*phone\.heic.*pillow-heif"):
        ds = load_dataset("folder", root=tmp_path, image_size=8)
    assert [p.name for p in ds.paths] == ["anim.gif", "scan.tif"]
    assert torch.allclose(ds[0][0], torch.tensor(50 / 255), atol=2 / 255)
    assert torch.allclose(ds[1][0], torch.tensor(200 / 255))


def _write_broken(root: Path) -> list[str]:
    """Good images plus: a truncated PNG, a truncated JPEG, text named .png, an empty .jpg."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "good.png")
    Image.fromarray(noise).save(root / "good.jpg")
    (root / "sub").mkdir()
    (root / "sub" / "cut.png").write_bytes((root / "good.png").read_bytes()[:600])
    (root / "sub" / "cut.jpg").write_bytes((root / "good.jpg").read_bytes()[:700])
    (root / "readme.png").write_text("this is not a picture")
    (root / "empty.jpg").write_bytes(b"")
    return ["empty.jpg", "readme.png", "sub/cut.jpg", "sub/cut.png"]


def test_unreadable_files_listed_at_once_before_training(tmp_path):
    from mcm_core.data.imageops import read_image
    from mcm_core.data.real import UnreadableImagesError

    bad = _write_broken(tmp_path)
    with pytest.raises(UnreadableImagesError) as err:
        load_dataset("folder", root=tmp_path, image_size=16)
    message = str(err.value)
    assert "4 of 6 image files" in message and "skip_unreadable=True" in message
    assert all(name in message for name in bad) and "good" not in message
    assert sorted(p.relative_to(tmp_path).as_posix() for p, _ in err.value.bad) == bad
    assert "truncated" in dict((p.name, r) for p, r in err.value.bad)["cut.png"]
    assert isinstance(err.value, ValueError)
    with pytest.raises(ValueError, match=r"cut\.jpg.*remove it from the data folder"):
        read_image(tmp_path / "sub" / "cut.jpg")
    # Many bad files: the message names LIST_AT_MOST of them and counts the rest.
    for i in range(25):
        (tmp_path / f"junk{i:02d}.png").write_text("x")
    with pytest.raises(UnreadableImagesError, match=r"(?s)29 of 31 .*\.\.\. and 9 more"):
        load_dataset("folder", root=tmp_path, image_size=16)


def test_skip_unreadable_drops_with_warning(tmp_path):
    from mcm_core.data import dataset_options

    assert "skip_unreadable" in dataset_options("folder")
    _write_broken(tmp_path)
    with pytest.warns(UserWarning, match=r"(?s)skipping 4 of 6.*sub/cut\.png"):
        ds = load_dataset("folder", root=tmp_path, image_size=16, skip_unreadable=True)
    assert [p.name for p in ds.paths] == ["good.jpg", "good.png"]
    assert sorted(p.name for p, _ in ds.skipped) == ["cut.jpg", "cut.png", "empty.jpg", "readme.png"]
    assert ds[1][0].shape == (3, 16, 16)
    with pytest.raises(TypeError, match="skip_unreadable"):
        load_dataset("folder", root=tmp_path, skip_unreadable="yes")


def test_small_images_warn_and_progress_bar(tmp_path, capsys, monkeypatch):
    import warnings

    import mcm_core.data.real as real

    Image.fromarray(np.zeros((6, 10, 3), dtype=np.uint8)).save(tmp_path / "tiny.png")
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(tmp_path / "fine.png")
    small = r"1 of 2 images are much smaller than image_size=32.*tiny\.png \(10 x 6\)"
    with pytest.warns(UserWarning, match=small):
        load_dataset("folder", root=tmp_path, image_size=32)
    monkeypatch.setattr(real, "SCAN_PROGRESS_MIN", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 6 px is not under half of 8: no warning
        load_dataset("folder", root=tmp_path, image_size=8)
    assert "checking images" in capsys.readouterr().err


def test_scan_images_in_threads_keeps_order(tmp_path):
    from mcm_core.data.real import scan_images

    Image.fromarray(np.zeros((3, 5), dtype=np.uint8)).save(tmp_path / "good.png")
    paths = []
    for i in range(70):  # more than 64 files: decoded by a thread pool
        path = tmp_path / f"{i:02d}.png"
        if i % 7 == 0:
            path.write_text("not a png")
        else:
            path.write_bytes((tmp_path / "good.png").read_bytes())
        paths.append(path)
    results = scan_images(paths, progress=False)
    assert [isinstance(r, str) for r in results] == [i % 7 == 0 for i in range(70)]
    assert results[1] == (5, 3)
