"""Beyond the report: L-BFGS, colour preservation."""

import numpy as np
import torch
from PIL import Image

from ablation.engine.colors import luminance_transfer_ycbcr, match_colors, preserve_colors
from ablation.engine.losses import LossWeights
from ablation.engine.network import NetworkSpec, VGGFeatures
from ablation.engine.transfer import TOTAL, LBFGSSettings, compute_targets, initial_image, new_state, stylize


def small_problem(weights):
    rng = torch.Generator().manual_seed(0)
    content = torch.rand(1, 3, 32, 32, generator=rng) * 255 - 120
    style = torch.rand(1, 3, 32, 32, generator=rng) * 255 - 120
    net = VGGFeatures(NetworkSpec(), weights.convs, "relu5_1")
    return net, compute_targets(net, content, [style], LossWeights()), content


def totals(net, targets, state, iterations):
    rows = np.concatenate([p.losses[:, 0, TOTAL] for p in stylize(net, targets, state, iterations)])
    return rows


def test_lbfgs_lowers_the_loss_one_evaluation_per_iteration(vgg19_random):
    net, targets, content = small_problem(vgg19_random)
    state = new_state(initial_image(content, [0]), LBFGSSettings())
    rows = totals(net, targets, state, 20)
    assert rows[-1] < 0.5 * rows[0]  # measured: 20 L-BFGS iterations take the total from 1.2e5 to ~1e4
    assert state.evaluations == 21  # 20 iterations + the final image's forward: no hidden line search


def test_lbfgs_with_line_search_counts_its_evaluations(vgg19_random):
    net, targets, content = small_problem(vgg19_random)
    state = new_state(initial_image(content, [0]), LBFGSSettings(line_search="strong_wolfe"))
    rows = totals(net, targets, state, 5)
    assert rows[-1] < rows[0] and state.evaluations > 6


def test_preserve_colors_keeps_content_chroma_exactly():
    rng = np.random.default_rng(0)
    content = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
    stylised = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
    ycbcr = luminance_transfer_ycbcr(stylised, content)
    content_ycbcr = np.array(Image.fromarray(content).convert("YCbCr"))
    assert np.array_equal(ycbcr[..., 1:], content_ycbcr[..., 1:])
    # luma is the stylised image's Rec.601 grey (upstream truncates it to uint8 first)
    grey = (stylised.astype(np.float64) @ [0.299, 0.587, 0.114]).astype(np.uint8)
    assert np.abs(ycbcr[..., 0].astype(int) - grey).max() <= 1
    out = preserve_colors(stylised, content)
    assert out.shape == content.shape and out.dtype == np.uint8
    # stylising a photo into itself gives the photo back, up to uint8 rounding in the two conversions
    same = np.abs(preserve_colors(content, content).astype(int) - content)
    assert same.max() <= 4 and same.mean() < 2  # measured: max 4, mean 1.4


def test_match_colors_moves_the_style_palette_to_the_content():
    rng = np.random.default_rng(1)
    content = np.clip(rng.normal([200, 60, 40], 20, (32, 32, 3)), 0, 255).astype(np.uint8)
    style = np.clip(rng.normal([40, 80, 200], 30, (24, 40, 3)), 0, 255).astype(np.uint8)
    matched = match_colors(style, content)
    assert matched.shape == style.shape
    assert np.allclose(matched.reshape(-1, 3).mean(0), content.reshape(-1, 3).mean(0), atol=2)


def test_second_scale_starts_from_the_first_upsampled(vgg19_random):
    from ablation.engine.adam import AdamSettings
    from ablation.engine.scales import Stage, coarse_to_fine, upsample

    net = VGGFeatures(NetworkSpec(), vgg19_random.convs, "relu5_1")
    rng = torch.Generator().manual_seed(0)
    stages = []
    for size in (16, 24):
        content = torch.rand(1, 3, size, size, generator=rng) * 255 - 120
        stages.append(Stage(net, compute_targets(net, content, [content.flip(-1)], LossWeights()), (size, size), 3))
    first = initial_image(stages[0].targets.content["relu4_2"].new_zeros(1, 3, 16, 16), [0])
    finals, starts, steps = {}, {}, []
    for progress in coarse_to_fine(stages, first, AdamSettings(), log_every=1, sync_every=1):
        scale = progress.scale
        steps.append(progress.global_step)
        if progress.step == 0:  # yielded before the first optimiser step: the image is the scale's start
            starts[scale] = progress.state.image.detach().clone()
        if progress.done:
            finals[scale] = progress.state.image.detach().clone()
    assert steps == list(range(8))  # 0..3 at 16 px, then 4..7 at 24 px on one axis
    assert starts[1].shape[-2:] == (24, 24)
    assert torch.equal(starts[1], upsample(finals[0], (24, 24)))
    assert not torch.equal(finals[1][..., :16, :16], finals[0])


def test_two_scale_run_logs_each_scale_and_the_colour_preserved_image(store, tmp_path):
    from mlflow.tracking import MlflowClient

    from ablation.job import execute
    from tests.support import config_for

    overrides = {
        "run.scales": "[32,48]", "run.scale_iterations": "[3,2]", "run.quiet": "true", "run.checkpoint_every": 0,
        "transfer.preserve_colors": "true", "judge.enabled": "false",
    }  # fmt: skip
    results = execute(config_for(**overrides))
    client = MlflowClient(store)
    run = client.get_run(results["run_id"])
    assert run.data.params["content_size_wh"] == "48x63"  # the finest scale: floor(533 / 400 * 48)
    assert run.data.metrics["scale0_width"] == 32 and run.data.metrics["scale1_width"] == 48
    assert run.data.metrics["scale0_loop_s"] > 0 and run.data.metrics["scale1_loop_s"] > 0
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "total"))
    assert steps == list(range(7))  # 0..3 at 32 px, then 4..6 at 48 px, on one axis
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"final.png", "final_colors.png", "scales"} <= files
    final = np.array(Image.open(client.download_artifacts(run.info.run_id, "final_colors.png", str(tmp_path))))
    content = np.array(Image.open(client.download_artifacts(run.info.run_id, "inputs/content.png", str(tmp_path))))
    assert final.shape == content.shape == (63, 48, 3)
    # the colour-preserved output keeps the photo's chroma up to the RGB round trip
    chroma = np.abs(
        np.array(Image.fromarray(final).convert("YCbCr"))[..., 1:].astype(int)
        - np.array(Image.fromarray(content).convert("YCbCr"))[..., 1:]
    )
    assert np.median(chroma) <= 2
