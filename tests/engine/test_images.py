"""Upstream's resizing rules and the pixel space."""

import numpy as np
import pytest
import torch

from ablation.engine.images import ImageError, PixelSpace, check_sizes, content_size, smallest_width, style_size
from ablation.engine.plan import ImagesSpec
from ablation.engine.prepare import load_images


def test_content_width_sets_floor_height():
    # the report's content is 400x533 (w x h): width 64 -> floor(533 / 400 * 64) = floor(85.28) = 85
    assert content_size((400, 533), 64) == (64, 85)
    assert content_size((400, 533), None) == (400, 533)


def test_style_scaled_to_content_width_times_scale():
    # Starry Night is 640x507: to a 64 px content at scale 1 -> factor 0.1 -> 64 x int(50.7) = 50
    assert style_size((640, 507), 64, 1.0) == (64, 50)
    assert style_size((640, 507), 64, 0.5) == (32, 25)


def test_a_flat_content_is_refused_before_any_resize_with_the_width_that_works():
    """64x3 at width 64 stays 3 px tall; floor(3 / 64 * w) >= 16 first holds at w = 342 (341 gives 15.98)."""
    assert smallest_width((64, 3)) == 342 and content_size((64, 3), 341)[1] == 15
    with pytest.raises(ImageError, match=r"c\.png is 64x3 px: at images\.width=64 the content would be 64x3 px.*"
                       r"use images\.width=342 or more"):  # fmt: skip
        check_sizes(["c.png", "s.png"], [(64, 3), (64, 64)], [64], [1.0])


def test_a_style_scaled_below_the_minimum_names_its_scale():
    """A 40x10 style at a 32 px content and scale 1 is 32x8: its height is short."""
    with pytest.raises(ImageError, match=r"s\.png is 40x10 px: .* images\.style_scales\[0\]=1 it would be 32x8 px"):
        check_sizes(["c.png", "s.png"], [(64, 64), (40, 10)], [32], [1.0])


def test_the_coarse_scale_is_named_by_its_key():
    with pytest.raises(ImageError, match=r"at run\.scales\[0\]=8 the content would be 8x8 px"):
        check_sizes(["c.png", "s.png"], [(64, 64), (64, 64)], [8, 32], [1.0], "run.scales")
    check_sizes(["c.png", "s.png"], [(64, 64), (64, 64)], [16, 32], [1.0], "run.scales")  # both fit: no error


def test_report_pair_loads_at_the_reports_sizes(shared, monkeypatch):
    monkeypatch.setenv("ABLATION_DATA_DIR", str(shared / "data"))
    images = load_images(ImagesSpec("starry-content.jpg", ("starry-style.jpg",), (1.0,), None, None))
    assert images.content.shape == (533, 400, 3)  # kept at full size without images.width
    assert images.styles[0].shape == (316, 400, 3)  # 640x507 scaled by 400/640 -> 400 x int(316.875)
    assert images.sha256[0] == "bac8cf149573b86f11f33724574884cb0dbf360b775fe124c6d59bd8483632da"


def test_pixel_space_round_trip_and_truncation():
    pixels = PixelSpace((123.68, 116.779, 103.939))
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    x = pixels.encode(image)
    assert x.shape == (1, 3, 5, 7) and x[0, 0, 0, 0].item() == pytest.approx(image[0, 0, 0] - 123.68, abs=1e-4)
    assert np.array_equal(pixels.decode(x), image)
    # 200.9 - mean + mean truncates to 200 (upstream casts to uint8); out-of-range values clip
    odd = torch.tensor([200.9 - 123.68, -500.0, 900.0]).view(1, 3, 1, 1)
    assert pixels.decode(odd)[0, 0].tolist() == [200, 0, 255]
