"""Engine speed settings applied once per run: backend flags and the network's memory layout.

Kept apart from the loop so the loop reads as the algorithm. Nothing here changes what is computed
except ``precision``: ``fp32`` is IEEE float32 everywhere (torch's CUDA default lets cuDNN convolutions
use TF32, which rounds their inputs to 10 mantissa bits, so it is switched off explicitly), ``tf32``
allows TF32 for convolutions and matmuls on CUDA (no effect on a CPU), and ``bf16`` runs the network
under autocast while Grams and losses stay in float32 (see ``transfer.loss_terms``).
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import torch

from ablation.engine.errors import UserError
from ablation.engine.network import VGGFeatures
from ablation.engine.transfer import EngineOptions

PRECISIONS = ("fp32", "tf32", "bf16")


def configure_backends(options: EngineOptions, device: torch.device) -> None:
    """Set the process-wide flags the options call for; cheap, so callers may repeat it per phase.

    TF32 only with ``precision="tf32"``; ``cudnn.benchmark`` on CUDA (the image size is fixed for a
    whole run, so the one-off autotuning per conv shape pays back within a few iterations).
    """
    if options.precision not in PRECISIONS:
        raise ValueError(f"run.precision={options.precision!r}: choose one of {', '.join(PRECISIONS)}")
    if options.precision == "bf16" and not native_bf16(device):
        warnings.warn(
            f"run.precision=bf16 on a {device.type} without native bf16 (oneDNN/CUDA report none): the network "
            "runs emulated, many times slower than fp32; use run.precision=fp32 here",
            stacklevel=2,
        )
    fp32 = "tf32" if options.precision == "tf32" else "ieee"
    torch.backends.cuda.matmul.fp32_precision = fp32
    torch.backends.cudnn.conv.fp32_precision = fp32
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def prefers_channels_last(device: torch.device, precision: str = "fp32") -> bool:
    """``run.channels_last=auto``: NHWC on CPUs whose convolutions run on oneDNN (mkldnn), on CUDA for the tensor-core
    precisions (tf32, bf16); NCHW for CUDA fp32 and elsewhere.

    Measured with ``python -m ablation.bench`` (VGG19 ``original``, 256 px, 2-core AMD EPYC, torch 2.14.1),
    NHWC beat NCHW on every oneDNN CPU tried: AVX2 2204 vs 2253 ms/it, AVX-512 (Zen 5) fp32 367 vs 396 and
    bf16 209 vs 240. On an H200 (``python -m ablation.bench --device cuda --variants original``, torch 2.11,
    median ms/it at 256, 512, 1024 px): tf32 NHWC 10.5, 9.8, 13.1 against NCHW 10.9, 10.0, 16.5, bf16 12.1, 10.7,
    11.7 against 12.1, 10.7, 15.0 (cuDNN's tensor-core kernels take NHWC; the smaller sizes are bound by the host,
    about 10 ms per iteration either way); fp32 NCHW 9.7, 19.2, 65.6 against NHWC 10.6, 20.2, 67.8. MPS was not
    measured, so it keeps NCHW, the layout every kernel supports.
    """
    if device.type == "cuda":
        return precision in ("tf32", "bf16")
    return device.type == "cpu" and torch.backends.mkldnn.is_available()


def check_channels_last(value: object) -> None:
    """``run.channels_last`` is a bool or ``"auto"``; anything else is refused in one line."""
    if not isinstance(value, bool) and value != "auto":
        raise UserError(f"run.channels_last={value!r}: give true, false or auto")


def resolve_options(options: EngineOptions, device: torch.device) -> EngineOptions:
    """``options`` with ``channels_last="auto"`` decided for ``device``: a bool, what the run used (and records)."""
    check_channels_last(options.channels_last)
    if options.channels_last == "auto":
        return replace(options, channels_last=prefers_channels_last(device, options.precision))
    return options


def set_layout(net: VGGFeatures, options: EngineOptions) -> VGGFeatures:
    """Store the conv weights channels_last when the activations will be (in place; returns ``net``).

    A channels_last input with NCHW weights makes cuDNN copy every weight into the input's layout on
    every call; converting the weights once removes that copy. ``loss_terms`` converts the input.
    """
    if not isinstance(options.channels_last, bool):
        raise ValueError(f"channels_last={options.channels_last!r}: resolve it first (backends.resolve_options)")
    layout = torch.channels_last if options.channels_last else torch.contiguous_format
    return net.to(memory_format=layout)


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 convolutions run natively: on a CPU oneDNN needs AVX-512 BF16 or AMX (an AVX2-only
    CPU falls back to a reference kernel, measured 6x-170x slower than fp32), on CUDA compute 8.0+."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False
