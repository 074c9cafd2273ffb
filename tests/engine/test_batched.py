"""Batched seeds: optimising seeds as one [B, 3, H, W] batch gives each seed its own sequential run.

Why it must hold: every loss keeps the batch axis and backward uses the sum over samples, so sample i's
gradient is that of its own loss; Adam is elementwise. What differs is only float rounding (a batched
convolution may sum in another order, ~1e-7 relative in float32). Adam amplifies that: its first steps
move each pixel by about lr * sign(gradient), so a pixel whose gradient is at rounding level may move +10
in one run and -10 in the other, and with max pooling such pixels are common (measured: 0.85% apart after
5 steps at 24x32). So the algebra is checked in float64, where rounding is 1e-16 and the runs agree to
the float32 loss history's precision over several steps, and the float32 engine over its first step.
"""

from __future__ import annotations

import numpy as np
import torch

from ablation.engine.losses import LossWeights
from ablation.engine.network import NetworkSpec, VGGFeatures
from ablation.engine.transfer import TOTAL, Targets, compute_targets, initial_image, loss_terms, new_state, stylize
from ablation.engine.weights import random_weights
from tests.support import config, run_overrides, sqlite_store

SEEDS = (0, 1)


def _problem(dtype: torch.dtype, pooling: str = "max") -> tuple[VGGFeatures, torch.Tensor, Targets]:
    weights = random_weights("vgg19", seed=0)
    net = VGGFeatures(NetworkSpec(pooling=pooling), weights.convs, "relu5_1").to(dtype)
    noise = torch.Generator().manual_seed(1)
    content = (torch.randn(1, 3, 24, 32, generator=noise) * 60.0).to(dtype)  # pixel space, the images' spread
    style = (torch.randn(1, 3, 32, 32, generator=noise) * 60.0).to(dtype)
    return net, content, compute_targets(net, content, [style], LossWeights())


def _run(net: VGGFeatures, content: torch.Tensor, targets: Targets, seeds: list[int], iterations: int):
    state = new_state(initial_image(content, seeds))
    losses = np.concatenate([p.losses for p in stylize(net, targets, state, iterations, sync_every=5)])
    return losses, state


def test_batched_seeds_equal_sequential_runs():
    """float64, max pooling, 5 Adam steps: measured identical images, losses within 1.1e-7 (the float32
    history's rounding) after 10 steps."""
    iterations, loss_rtol, image_atol = 5, 1e-6, 1e-9
    net, content, targets = _problem(torch.float64)
    batch_losses, batch_state = _run(net, content, targets, list(SEEDS), iterations)
    assert batch_losses.shape == (iterations + 1, len(SEEDS), 4)
    for i, seed in enumerate(SEEDS):
        losses, state = _run(net, content, targets, [seed], iterations)
        np.testing.assert_allclose(batch_losses[:, i], losses[:, 0], rtol=loss_rtol)
        torch.testing.assert_close(batch_state.image[i], state.image[0], rtol=0, atol=image_atol)
        torch.testing.assert_close(batch_state.best_image[i], state.best_image[0], rtol=0, atol=image_atol)
        assert int(batch_state.best_step[i]) == int(state.best_step[0])
    # the seeds really are different runs: their totals differ by far more than the tolerance
    first, second = batch_losses[-1, :2, TOTAL]
    assert abs(first - second) > 100 * loss_rtol * abs(first)


def test_batched_float32_losses_and_gradients_equal_per_sample():
    """float32, the engine as it runs: sample i's losses and gradient in a batch are those of its image
    alone, to rounding (measured: gradients within 1.5e-7 of their largest magnitude). Average pooling:
    with max pooling a rounding-level difference can flip a near-tie's argmax and route a gradient
    elsewhere (measured 0.3% of the largest gradient), which says nothing about batching."""
    net, content, targets = _problem(torch.float32, pooling="avg")
    images = initial_image(content, list(SEEDS)).requires_grad_(True)
    terms = loss_terms(net, images, targets)
    terms[:, 3].sum().backward()
    for i in range(len(SEEDS)):
        alone = images[i : i + 1].detach().clone().requires_grad_(True)
        alone_terms = loss_terms(net, alone, targets)
        alone_terms[:, 3].sum().backward()
        torch.testing.assert_close(terms[i].detach(), alone_terms[0].detach(), rtol=1e-5, atol=0)
        scale = float(alone.grad.abs().max())
        torch.testing.assert_close(images.grad[i], alone.grad[0], rtol=0, atol=1e-5 * scale)


def test_each_seed_draws_its_own_noise():
    content = torch.zeros(1, 3, 16, 16)
    batch = initial_image(content, [3, 7])
    torch.testing.assert_close(batch[1:], initial_image(content, [7]), rtol=0, atol=0)
    # upstream's noise: N(0, 1) * 0.256, so the sample standard deviation is near 0.256
    assert abs(float(batch.std()) - 0.256) < 0.02


def test_batched_run_logs_one_mlflow_run_per_seed(tmp_path, monkeypatch):
    """``run.seeds=[0,1]``: two FINISHED runs, each tagged with its seed, whose final losses are those of
    that seed run alone through the same engine (average pooling, 1 step: rounding level, see above)."""
    from PIL import Image

    from ablation import job
    from ablation.engine.prepare import prepare
    from ablation.spec import from_config
    from ablation.store import connection

    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 40, 48, 3), dtype=np.uint8)
    for name, image in zip(("content.png", "style.png"), pixels, strict=True):
        Image.fromarray(image).save(tmp_path / name)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_store(tmp_path))
    monkeypatch.chdir(tmp_path)  # a store other than the project's puts artifacts in ./mlruns
    overrides = [
        "weights=random",
        "variant=avg_pool",
        f"images.content={tmp_path / 'content.png'}",
        f"images.styles=[{tmp_path / 'style.png'}]",
        "run.iterations=1",
        "run.seeds=[0,1]",
        "run.batch_seeds=true",  # on a CPU seeds otherwise run one after another (see the next test)
        "run.quiet=true",
        "run.checkpoint_every=0",
        "tracking.experiment=batched",
    ]
    cfg = config(overrides)
    results = job.execute(cfg)

    experiment_id, client = connection.open_store("batched"), connection.client()
    runs = {r.data.tags["seed"]: r for r in client.search_runs([experiment_id])}
    assert sorted(runs) == ["0", "1"]
    assert [r["run_id"] for r in results["seed_results"]] == [runs["0"].info.run_id, runs["1"].info.run_id]
    spec = from_config(cfg)
    problem = prepare(spec, torch.device("cpu"))
    for seed, logged in runs.items():
        assert logged.info.status == "FINISHED"
        assert logged.data.params["run.seed"] == seed and logged.data.params["batch_size"] == "2"
        alone, _ = _run(problem.net, problem.content, problem.targets, [int(seed)], spec.iterations)
        np.testing.assert_allclose(logged.data.metrics["final_total"], alone[-1, 0, 3], rtol=1e-5)
    totals = [runs[s].data.metrics["final_total"] for s in ("0", "1")]
    assert abs(totals[0] - totals[1]) > 1e-4 * totals[0]  # the two runs are distinguishable


def test_seeds_on_a_cpu_run_one_after_another_with_one_setup(tmp_path, monkeypatch):
    """``run.seeds=[0,1]`` on a CPU (``run.batch_seeds`` unset): two runs of batch size 1, the network and targets
    prepared once, and each seed's final losses exactly those of ``run.seed=<seed>`` alone."""
    from ablation import job

    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_store(tmp_path))
    prepared = []
    real_prepare = job.prepare
    monkeypatch.setattr(job, "prepare", lambda *args: prepared.append(args) or real_prepare(*args))
    overrides = run_overrides(tmp_path, 3)
    both = job.execute(config(overrides + ["run.seeds=[0,1]"]))["seed_results"]
    assert len(prepared) == 1
    assert [r["batch_size"] for r in both] == [1, 1]
    for seed, results in enumerate(both):
        alone = job.execute(config(overrides + [f"run.seed={seed}", "tracking.experiment=alone"]))
        assert results["final_total"] == alone["final_total"]  # bit for bit: the same computation
    assert both[0]["final_total"] != both[1]["final_total"]
