"""The memory estimate counts what autograd keeps, exactly; ``fit`` resolves ``images.width=max`` and
``run.activation_checkpointing=auto`` from it and refuses a run that cannot fit, naming widths that would."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ablation.engine import memory
from ablation.engine.losses import LossWeights
from ablation.engine.memory import MemoryEstimateError, Workload, estimate, saved_bytes
from ablation.engine.network import NetworkSpec, VGGFeatures
from ablation.engine.transfer import EngineOptions, compute_targets, loss_terms
from ablation.engine.weights import random_weights
from ablation.spec import from_config
from tests.support import config, run_overrides

HW = (48, 64)
#: Each style layer's Gram difference to its target, C x C float32: 4 * (64^2 + 128^2 + 256^2 + 2 * 512^2).
GRAM_DIFFS = 2_441_216


def autograd_saved(spec: NetworkSpec, options: EngineOptions, batch: int) -> int:
    """Bytes of every tensor autograd saves in one loss evaluation (each storage once), the network's weights
    and the optimised image excluded (they exist anyway)."""
    net = VGGFeatures(spec, random_weights(spec.arch, 0).convs, "relu5_1")
    net = net.to(memory_format=torch.channels_last if options.channels_last else torch.contiguous_format)
    targets = compute_targets(net, torch.rand(1, 3, *HW), [torch.rand(1, 3, *HW)], LossWeights())
    image = torch.rand(batch, 3, *HW, requires_grad=True)
    exist = {p.untyped_storage().data_ptr() for p in [*net.parameters(), image]}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss_terms(net, image, targets, options)
    return sum(size for ptr, size in seen.items() if ptr not in exist)


@pytest.mark.parametrize(
    ("spec", "precision", "channels_last", "batch"),
    [
        (NetworkSpec(), "fp32", False, 1),
        (NetworkSpec(), "fp32", True, 1),
        (NetworkSpec(pooling="avg"), "fp32", False, 2),
        (NetworkSpec(activation="leaky_relu"), "fp32", False, 1),
        (NetworkSpec(final_activation="tanh"), "fp32", True, 1),
        (NetworkSpec(arch="vgg16"), "fp32", False, 1),
        (NetworkSpec(), "bf16", True, 1),
    ],
    ids=["nchw", "nhwc", "avg-batch2", "leaky", "tanh", "vgg16", "bf16"],
)
def test_saved_bytes_are_what_autograd_saves(
    spec: NetworkSpec, precision: str, channels_last: bool, batch: int
) -> None:
    work = Workload(spec, "relu5_1", LossWeights(), precision, channels_last, HW, (HW,), batch)
    counted = saved_bytes(work) + batch * GRAM_DIFFS
    # autocast's bf16 copies of the weights the network uses (counted with the weights)
    counted += estimate(work).weights - estimate(replace(work, precision="fp32")).weights
    assert autograd_saved(spec, EngineOptions(precision, channels_last), batch) == counted


def test_checkpointing_keeps_half_the_activations_at_2048_px() -> None:
    """VGG19 at 2048 px: 397 floats per pixel kept without checkpointing; with it, the stages' inputs (the image,
    the pools' outputs, TV's differences: 39; the Grams' differences 0.1) and the first stage recomputed (two
    64-channel ReLUs: 128; the pool's indices are recomputed in its backward), so the loop's peak (with the image
    state, the targets and the backward's working set) is 0.62 of the plain one's."""
    work = Workload(NetworkSpec(), "relu5_1", LossWeights(), "fp32", True, (2048, 2048), ((2048, 2048),))
    plain, lean = estimate(work), estimate(replace(work, checkpointing=True))
    pixels = 2048 * 2048
    assert plain.saved / 4 / pixels == pytest.approx(397.1, abs=0.1)
    assert lean.saved / 4 / pixels == pytest.approx(167.1, abs=0.1)
    assert lean.loop_bytes / plain.loop_bytes == pytest.approx(0.62, abs=0.01)


@pytest.mark.parametrize(
    ("spec", "recomputed"),
    [(NetworkSpec(), 2), (NetworkSpec(arch="vgg16"), 1), (NetworkSpec(pooling="avg"), 1)],
    ids=["vgg19", "vgg16", "avg"],
)
def test_checkpointing_recomputes_the_fewest_stages_that_give_the_lowest_peak(
    spec: NetworkSpec, recomputed: int
) -> None:
    """VGG19 keeps its second stage's 128-channel activations and indices (96 floats per pixel) beside the
    third's: recomputing one stage only would peak 4% higher than recomputing all five; two peak the same."""
    work = Workload(spec, "relu5_1", LossWeights(), "fp32", True, (2048, 2048), ((2048, 2048),), 1, True)
    assert memory.recomputed_stages(work) == recomputed
    peaks = [sum(memory.loop_peak(work, k)) for k in range(1, 6)]
    assert peaks[recomputed - 1] == min(peaks) < (peaks[recomputed - 2] if recomputed > 1 else 2**62)


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_the_reference_path_counts_each_stages_im2col_columns(
    native: bool, store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without native bf16 a CPU convolves bf16 by im2col and a matmul; the backward holds the columns of the
    stage's largest conv input. At 512x512 the first stage's is relu1_1's output, 64 x 512 x 512 elements: 9 x that
    in bf16 is 301,989,888 bytes, beside the 33,554,432 of its gradient."""
    monkeypatch.setattr(memory, "native_bf16", lambda device: native)
    spec = from_config(config(run_overrides(tmp_path, 2) + ["run.precision=bf16"]))
    work = memory.workload(spec, torch.device("cpu"), checkpointing=True)
    assert work.im2col is not native
    square = replace(work, content_hw=(512, 512), styles_hw=((512, 512),))
    assert memory.loop_peak(square, 2)[1] == 33_554_432 + (0 if native else 301_989_888)
    fp32 = replace(spec, engine=replace(spec.engine, precision="fp32"))
    assert memory.workload(fp32, torch.device("cpu"), checkpointing=True).im2col is False  # fp32 runs on oneDNN


def test_width_max_takes_the_widest_that_fits_and_auto_turns_checkpointing_on_only_then(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = from_config(config(run_overrides(tmp_path, 2) + ["images.width=max"]))
    cpu = torch.device("cpu")
    room = 3 * 2**30
    monkeypatch.setattr(memory, "available_bytes", lambda device: int(room / memory.SAFETY))
    plain, lean = (memory.largest_width(spec, cpu, room, on) for on in (False, True))
    assert 16 <= plain < lean
    chosen = memory.fit(spec, cpu)
    assert (chosen.images.width, chosen.engine.checkpointing) == (lean, True)
    assert not memory._fits(chosen, cpu, room, False) and not memory._fits(chosen, cpu, room, True, lean + 1)
    narrow = memory.fit(replace(spec, images=replace(spec.images, width=plain)), cpu)
    assert narrow.engine.checkpointing is False  # fits without: auto leaves it off
    off = replace(spec, engine=replace(spec.engine, checkpointing=False))
    assert memory.fit(off, cpu).images.width == plain


def test_a_run_too_wide_is_refused_with_the_widths_that_fit(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = ["images.width=4000", "run.activation_checkpointing=false"]
    spec = from_config(config(run_overrides(tmp_path, 2) + overrides))
    monkeypatch.setattr(memory, "available_bytes", lambda device: 3 * 2**30)
    with pytest.raises(MemoryEstimateError) as refused:
        memory.fit(spec, torch.device("cpu"))
    plain, lean = (memory.largest_width(spec, torch.device("cpu"), int(3 * 2**30 * 0.9), on) for on in (False, True))
    assert f"use images.width={plain} or images.width={lean} with run.activation_checkpointing=true or less" in str(
        refused.value
    )


def test_on_cuda_what_the_allocator_holds_unused_counts_as_free(monkeypatch: pytest.MonkeyPatch) -> None:
    """The driver's 9 GiB free plus the 120 of the 130 GiB torch's allocator holds that no tensor uses (cuDNN's
    tuning took 129 GiB of an H200): 129 GiB. The CUDA calls are stood in for (this machine has no GPU);
    tests/cuda checks the same on a GPU after a real run."""
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (9 * gib, 141 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 130 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 10 * gib)
    assert memory.available_bytes(torch.device("cuda")) == 129 * gib
