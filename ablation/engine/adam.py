"""Upstream's optimiser: Adam with TensorFlow 1's update, on the image, through torch's own Adam kernel.

TF1 (upstream's ``tf.train.AdamOptimizer``): x -= lr * sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps). torch's kernel:
x -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps'). They agree when eps' = eps / sqrt(1-b2^t), so step t passes
that eps'; the difference matters where gradients are tiny (on the first step a gradient of 1e-6 moves its pixel by
0.76 lr, where torch's own epsilon would move it by 0.99 lr).

Why not ``torch.optim.Adam``: its methods (``__init__``, ``step``, ``zero_grad``) import ``torch._dynamo`` on their
first call, 2-3 s of CPU in every process that runs a transfer (a run's start-up is about 10 s). The functional
kernel ``torch.optim.adam.adam`` is the one ``torch.optim.Adam.step`` calls, so the numbers are the same bit for bit
(tests/engine/test_adam.py), and the state dict has ``torch.optim.Adam``'s layout, so checkpoints written by either
load in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.adam import adam


@dataclass(frozen=True)
class AdamSettings:
    """Upstream's Adam (neural_style.py defaults)."""

    lr: float = 10.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8


class TF1Adam:
    """Adam on one tensor (the image), each step TensorFlow 1's; ``zero_grad``, ``step`` and the state dict as
    ``torch.optim.Adam`` has them."""

    def __init__(self, image: torch.Tensor, settings: AdamSettings) -> None:
        self.image, self.settings = image, settings
        self.exp_avg = torch.zeros_like(image, memory_format=torch.preserve_format)
        self.exp_avg_sq = torch.zeros_like(image, memory_format=torch.preserve_format)
        self.steps = torch.tensor(0.0)  # torch keeps the count as a float32 CPU tensor too
        # torch.optim.Adam's default: the multi-tensor kernel off the CPU (same arithmetic, fewer launches)
        self.foreach = image.device.type != "cpu"

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.image.grad = None

    @torch.no_grad()
    def step(self) -> None:
        s, t = self.settings, int(self.steps.item()) + 1
        adam(
            [self.image], [self.image.grad], [self.exp_avg], [self.exp_avg_sq], [], [self.steps],
            foreach=self.foreach, capturable=False, differentiable=False, fused=None, grad_scale=None,
            found_inf=None, has_complex=False, decoupled_weight_decay=False, amsgrad=False,
            beta1=s.beta1, beta2=s.beta2, lr=s.lr, weight_decay=0.0, eps=s.eps / (1.0 - s.beta2**t) ** 0.5,
            maximize=False,
        )  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim.Adam([image]).state_dict()``'s layout: no state before the first step."""
        state = {"step": self.steps.clone(), "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}
        s = self.settings
        group = {"lr": s.lr, "betas": (s.beta1, s.beta2), "eps": s.eps, "weight_decay": 0, "amsgrad": False}
        return {"state": {0: state} if self.steps.item() > 0 else {}, "param_groups": [group | {"params": [0]}]}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        state = saved["state"].get(0)
        if state is None:
            return
        device, dtype = self.image.device, self.image.dtype
        self.steps = state["step"].detach().to(torch.float32).cpu().clone()
        self.exp_avg = state["exp_avg"].to(device, dtype).clone(memory_format=torch.preserve_format)
        self.exp_avg_sq = state["exp_avg_sq"].to(device, dtype).clone(memory_format=torch.preserve_format)
