"""Every kind of input image the issue lists loads as the RGB it shows, or is refused in one line.

Files are generated here with Pillow (and one 16-bit RGB PNG written by hand, which Pillow cannot write),
so each expected pixel is known exactly; JPEG cases allow the codec's few levels of error.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ablation.engine.images import ImageError, image_size_wh, read_rgb

JPEG_TOLERANCE = 6  # levels of 255 a flat colour may move through JPEG at quality 95


def test_grey_becomes_three_equal_channels(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 100, 255]], dtype=np.uint8), "L").save(tmp_path / "g.png")
    assert read_rgb(tmp_path / "g.png").tolist() == [[[0, 0, 0], [100, 100, 100], [255, 255, 255]]]


def test_rgba_drops_alpha_keeping_the_colour(tmp_path: Path) -> None:
    """Upstream's imread keeps RGB and drops alpha, even where the pixel is fully transparent."""
    Image.fromarray(np.array([[[10, 20, 30, 0], [40, 50, 60, 255]]], dtype=np.uint8), "RGBA").save(tmp_path / "a.png")
    assert read_rgb(tmp_path / "a.png").tolist() == [[[10, 20, 30], [40, 50, 60]]]


@pytest.mark.parametrize("transparent", [False, True])
def test_palette_resolves_to_its_colours(tmp_path: Path, transparent: bool) -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putdata([0, 1])
    image.save(tmp_path / "p.png", **({"transparency": 0} if transparent else {}))
    assert read_rgb(tmp_path / "p.png").tolist() == [[[255, 0, 0], [0, 0, 255]]]


def test_sixteen_bit_grey_png_is_scaled_to_eight_bits(tmp_path: Path) -> None:
    """x / 257 maps 0..65535 onto 0..255 exactly: 32896 = 128 * 257."""
    Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16)).save(tmp_path / "g16.png")
    assert read_rgb(tmp_path / "g16.png")[0, :, 0].tolist() == [0, 128, 255]


def _png_rgb16(path: Path, pixels: np.ndarray) -> None:
    """A minimal 16-bit-per-channel RGB PNG (colour type 2, bit depth 16), big-endian samples."""
    h, w, _ = pixels.shape
    raw = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def test_sixteen_bit_rgb_png_keeps_its_colours(tmp_path: Path) -> None:
    _png_rgb16(tmp_path / "c16.png", np.array([[[65535, 0, 32896], [0, 65535, 0]]], dtype=np.uint16))
    assert read_rgb(tmp_path / "c16.png").tolist() == [[[255, 0, 128], [0, 255, 0]]]


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    """Pure cyan ink (C=255, M=Y=K=0) is RGB (0, 255, 255)."""
    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    rgb = read_rgb(tmp_path / "cmyk.jpg").astype(int)
    assert rgb.shape == (16, 16, 3)
    assert np.abs(rgb - [0, 255, 255]).max() <= JPEG_TOLERANCE


def test_exif_rotated_jpeg_is_upright(tmp_path: Path) -> None:
    """Orientation 6 means 'rotate 90 degrees clockwise to view': a 32x16 image, red left and blue
    right, is shown 16 wide and 32 tall with red on top."""
    pixels = np.zeros((16, 32, 3), dtype=np.uint8)
    pixels[:, :16] = (255, 0, 0)
    pixels[:, 16:] = (0, 0, 255)
    exif = Image.Exif()
    exif[274] = 6
    Image.fromarray(pixels).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    upright = read_rgb(tmp_path / "rot.jpg").astype(int)
    assert upright.shape == (32, 16, 3)
    assert image_size_wh(tmp_path / "rot.jpg") == (16, 32)  # the header-only size agrees
    assert np.abs(upright[4, 8] - [255, 0, 0]).max() <= JPEG_TOLERANCE
    assert np.abs(upright[28, 8] - [0, 0, 255]).max() <= JPEG_TOLERANCE
    assert read_rgb(tmp_path / "rot.jpg", exif_transpose=False).shape == (16, 32, 3)


def test_truncated_jpeg_is_refused_in_one_line(tmp_path: Path) -> None:
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cannot read .*t\.jpg as an image \(image file is truncated") as caught:
        read_rgb(tmp_path / "t.jpg")
    assert "\n" not in str(caught.value)


def test_not_an_image_and_missing_file_are_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("not a picture")
    with pytest.raises(ImageError, match=r"notes\.jpg as an image .*give a JPEG or PNG file"):
        image_size_wh(tmp_path / "notes.jpg")
    with pytest.raises(ImageError, match=r"image file not found: .*absent\.png"):
        read_rgb(tmp_path / "absent.png")
