"""Upstream's Adam through torch's kernel: torch.optim.Adam's numbers bit for bit (with TF1's epsilon each step),
its checkpoints load, and no ``torch._dynamo`` import (the reason the class exists)."""

from __future__ import annotations

import subprocess

import pytest
import torch

from ablation.engine.adam import AdamSettings, TF1Adam
from tests.support import PROJECT, PYTHON

SETTINGS = AdamSettings()


def gradient(x: torch.Tensor) -> torch.Tensor:
    """A smooth gradient with tiny and large entries (TF1's epsilon matters where it is tiny)."""
    return torch.sin(x / 7) * x * 1e-3


def torch_adam_steps(x: torch.Tensor, steps: int, saved: dict | None = None) -> tuple[torch.Tensor, dict]:
    """What the engine ran before: torch.optim.Adam with eps' = eps / sqrt(1 - b2^t) set before step t."""
    image = x.clone().requires_grad_(True)
    s = SETTINGS
    opt = torch.optim.Adam([image], lr=s.lr, betas=(s.beta1, s.beta2), eps=s.eps)
    if saved is not None:
        opt.load_state_dict(saved)
    done = int(saved["state"][0]["step"]) if saved else 0
    for t in range(done + 1, done + steps + 1):
        image.grad = gradient(image.detach())
        for group in opt.param_groups:
            group["eps"] = s.eps / (1.0 - s.beta2**t) ** 0.5
        opt.step()
    return image.detach(), opt.state_dict()


def tf1_adam_steps(x: torch.Tensor, steps: int, saved: dict | None = None) -> tuple[torch.Tensor, dict]:
    image = x.clone().requires_grad_(True)
    opt = TF1Adam(image, SETTINGS)
    if saved is not None:
        opt.load_state_dict(saved)
    for _ in range(steps):
        opt.zero_grad()
        image.grad = gradient(image.detach())
        opt.step()
    return image.detach(), opt.state_dict()


def test_twenty_steps_equal_torch_adam_with_tf1_epsilon_bit_for_bit() -> None:
    x = torch.randn(2, 3, 9, 11, generator=torch.Generator().manual_seed(0)) * 100
    theirs, their_state = torch_adam_steps(x, 20)
    ours, our_state = tf1_adam_steps(x, 20)
    assert torch.equal(ours, theirs)
    assert our_state["state"][0]["step"].item() == 20.0
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(our_state["state"][0][key], their_state["state"][0][key])


@pytest.mark.parametrize(("gradient", "moved"), [(1e-9, 0.031523), (1e-6, 7.5975)])
def test_the_first_step_is_tf1s_not_torchs(gradient: float, moved: float) -> None:
    """lr 10. TF1: lr * sqrt(1-b2) * g / (sqrt(1-b2) * g + eps): 0.0315 for g = 1e-9, 7.60 (0.76 lr, the module's
    docstring) for 1e-6; torch's own epsilon would give lr * g / (g + eps): 0.909 and 9.90."""
    image = torch.zeros(1, 1, 1, 1, requires_grad=True)
    opt = TF1Adam(image, SETTINGS)
    image.grad = torch.full_like(image, gradient)
    opt.step()
    assert -image.item() == pytest.approx(moved, rel=1e-4)


@pytest.mark.parametrize("direction", ["torch-to-ours", "ours-to-torch"])
def test_a_checkpoint_of_either_continues_in_the_other_bit_for_bit(direction: str) -> None:
    """Checkpoints written before this class (torch.optim.Adam's state dict) resume with it, and back."""
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 50
    first, second = (
        (torch_adam_steps, tf1_adam_steps) if direction == "torch-to-ours" else (tf1_adam_steps, torch_adam_steps)
    )
    halfway, saved = first(x, 7)
    resumed, _ = second(halfway, 8, saved)
    straight, _ = torch_adam_steps(x, 15)
    assert torch.equal(resumed, straight)


@pytest.mark.slow  # starts a process: torch._dynamo is already imported in a test worker
def test_a_transfer_step_imports_no_dynamo() -> None:
    code = (
        "import sys, torch\n"
        "from ablation.engine.adam import AdamSettings, TF1Adam\n"
        "x = torch.zeros(1, 3, 4, 4, requires_grad=True); opt = TF1Adam(x, AdamSettings())\n"
        "x.grad = torch.ones_like(x); opt.step(); opt.zero_grad(); opt.state_dict()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    done = subprocess.run([PYTHON, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
