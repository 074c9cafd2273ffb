"""Image inputs fuzzed: whatever the sizes, a run finishes or is refused in one line, and a refusal touches no store.

A new user tries small and oddly shaped images: a content 3 px tall asked at 64 px wide, a style scaled below a
pixel, a coarse scale of 4 px. Each of those once reached a resize to zero pixels or a feature map pooled to
nothing, and ended in a PIL or torch traceback. Hypothesis draws the content's and each style's width and height
(aspect ratios from 1:64 to 64:1), the width asked (``images.width``), the style scales and the coarse-to-fine widths
(``run.scales``), and runs the job in process for one step: the outcome is a FINISHED run or a
:class:`~ablation.engine.errors.UserError` of one line, and on a refusal the store (a sqlite file) is not even
opened. The number of examples is bounded, and so are the pixels an example that runs may compute
(:data:`PIXEL_BUDGET`), so that this runs in ``make test-fast`` in seconds: unbounded, a 1x64 style scaled to a 96 px
wide content (96x6144 px) took seconds a step, and the test 4 to 44 s from run to run. The resizing's edge cases are
small images, and those are all still drawn.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from ablation import job
from ablation.engine import hardware
from ablation.engine.errors import UserError
from ablation.engine.images import content_size, style_size
from ablation.engine.network import MIN_IMAGE_SIDE_PX
from tests.support import config, sqlite_store

#: A side in px, below the network's minimum (16) one time in four; a style scale, below 1 one time in three.
#: So some examples run (3-27% of them over eight runs, by `--hypothesis-show-statistics`) and the rest are refused.
SIDE = st.integers(1, 15) | st.integers(16, 64) | st.integers(24, 64) | st.integers(32, 64)
STYLE_SCALE = st.floats(0.05, 0.5) | st.just(1.0) | st.floats(1.0, 1.5)
EXAMPLES = 30
#: The most pixels an example that runs may push through the network: every image at every scale, summed. Up to a
#: tenth of the examples that run are over it (the largest seen: 593 k); 64 k px take about half a second on 2 cores.
PIXEL_BUDGET = 64_000
BASE = ["weights=random", "images.content=c.png", "images.styles=[s.png]", "run.iterations=1", "run.quiet=true",
        "run.checkpoint_every=0", "run.device=cpu", "judge.enabled=false"]  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, vgg19_random) -> Iterator[Path]:
    """A folder for the images and the store; the same random weights and no calibration for every example
    (both cost seconds and neither is what is tested)."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("fuzz")
        patch.setenv("MLFLOW_TRACKING_URI", sqlite_store(folder))
        patch.setattr(job, "load_weights", lambda *args, **kwargs: vgg19_random)
        patch.setattr(job.Machine, "measure", classmethod(lambda cls, device: cls(hardware.describe(device), 1.0)))
        yield folder


@pytest.fixture(scope="module")
def base() -> dict:
    """The composed config every example starts from (composing costs a third of a second: once, here)."""
    return config(BASE)


def image(folder: Path, name: str, size_wh: tuple[int, int]) -> Path:
    path = folder / f"{name}-{size_wh[0]}x{size_wh[1]}.png"
    if not path.is_file():
        pixels = np.random.default_rng(size_wh[0] * 100 + size_wh[1]).integers(0, 256, (*size_wh[::-1], 3))
        Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def store_state(folder: Path) -> tuple[int, int] | None:
    """The sqlite file's size and modification time (None before it exists): a refusal changes neither."""
    db = folder / "mlflow.db"
    return (db.stat().st_size, db.stat().st_mtime_ns) if db.exists() else None


def run_sizes(content_wh, styles_wh, widths, scales) -> list[tuple[int, int]]:
    """Every image's (w, h) at every scale, by upstream's resizing rules: the content, then its styles, per width."""
    sizes = []
    for width in widths:
        cw, ch = content_size(content_wh, width)
        sizes += [(cw, ch), *(style_size(wh, cw, s) for wh, s in zip(styles_wh, scales, strict=True))]
    return sizes


def fits(sizes: list[tuple[int, int]]) -> bool:
    """What the run should do: run when every image is at least MIN_IMAGE_SIDE_PX on each side."""
    return min(min(wh) for wh in sizes) >= MIN_IMAGE_SIDE_PX


@settings(
    max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    content=st.tuples(SIDE, SIDE),
    styles=st.lists(st.tuples(SIDE, SIDE, STYLE_SCALE), min_size=1, max_size=2),
    width=st.none() | SIDE,
    scales=st.none() | st.none() | st.lists(SIDE, min_size=1, max_size=2).map(sorted),
)
def test_any_sizes_finish_or_are_refused_in_one_line(folder: Path, base: dict, content, styles, width, scales) -> None:
    sizes = run_sizes(content, [(w, h) for w, h, _ in styles], scales or [width], [s for *_, s in styles])
    assume(not fits(sizes) or sum(w * h for w, h in sizes) <= PIXEL_BUDGET)
    cfg = copy.deepcopy(base)
    cfg["images"] |= {
        "content": str(image(folder, "content", content)),
        "styles": [str(image(folder, "style", (w, h))) for w, h, _ in styles],
        "style_scales": [s for *_, s in styles],
        "width": width,
    }
    cfg["run"]["scales"] = scales
    before = store_state(folder)
    try:
        results = job.execute(cfg)
    except UserError as err:
        event("refused")
        assert "\n" not in str(err) and str(err), str(err)
        assert store_state(folder) == before  # refused before the store was opened
        assert not fits(sizes), str(err)
        return
    event("finished")
    assert results["status"] == "finished"
    assert fits(sizes)
