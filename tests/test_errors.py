"""Bad input: one clear line naming the value and the fix, a non-zero exit, and the store left as it was.

Most cases go through ``ablation.job.execute`` in-process (the exception and its message are what the
CLI prints after ``error:``); a few go through the real ``python -m ablation.run`` for the exit code,
the single line and the absence of a traceback.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import HydraException
from mlflow.tracking import MlflowClient

from ablation.engine import memory
from ablation.engine.errors import UserError
from ablation.engine.images import ImageError
from ablation.engine.inputs import DataError
from ablation.engine.memory import MemoryEstimateError
from ablation.engine.weights import WeightsError, load_weights, random_weights
from ablation.job import execute
from ablation.paths import variant_names
from ablation.run import _CLI_MARK, USER_ERRORS, debug_requested, one_line
from ablation.spec import SpecError, from_config
from ablation.store.connection import TrackingError
from tests.support import PROJECT, PYTHON, composed, config, free_port, run_overrides, sqlite_store, store_env


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One store per module holding one finished run, which no refused run may disturb."""
    folder = tmp_path_factory.mktemp("store")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = sqlite_store(folder)
    execute(config(run_overrides(folder, 2)))
    yield folder
    if old is None:
        del os.environ["MLFLOW_TRACKING_URI"]
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


def only_the_first_run(folder: Path) -> None:
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("nst-ablation").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]


def refused(store: Path, extra: list[str], error: type, pattern: str) -> str:
    with pytest.raises(error, match=pattern) as caught:
        execute(config(run_overrides(store, 2) + extra))
    message = str(caught.value)
    assert "\n" not in message and isinstance(caught.value, USER_ERRORS)
    only_the_first_run(store)
    return message


#: The refusal of a final layer vgg16 lacks names the ones it has.
NO_RELU5_4 = (
    "variant.final_layer='relu5_4': vgg16 has no such layer; choose one of relu1_1, relu1_2, relu2_1, "
    "relu2_2, relu3_1, relu3_2, relu3_3, relu4_1, relu4_2, relu4_3, relu5_1, relu5_2, relu5_3"
)


@pytest.mark.parametrize(
    ("overrides", "error", "pattern"),
    [
        (["run.iterations=0"], SpecError, r"run\.iterations=0 must be > 0"),
        (["run.iterations=-3"], SpecError, r"run\.iterations=-3 must be > 0"),
        (["loss.style_weight=-1"], SpecError, r"loss\.style_weight=-1\.0 must be >= 0"),
        (["loss.tv_weight=-0.5"], SpecError, r"loss\.tv_weight=-0\.5 must be >= 0"),
        (["optim.lr=0"], SpecError, r"optim\.lr=0\.0 must be > 0"),
        (["loss.content_blend=1.5"], SpecError, r"loss\.content_blend=1\.5 must be in \[0, 1\]"),
        (["run.init_noise_blend=-0.1"], SpecError, r"run\.init_noise_blend=-0\.1 must be in \[0, 1\]"),
        (["images.style_blend=[0]"], SpecError, r"images\.style_blend=\[0\.0\] sums to 0"),
        (["images.style_blend=[0,0]", "images.styles=[a.jpg,b.jpg]"], SpecError, r"sums to 0"),
        (["images.width=-3"], SpecError, r"images\.width=-3 must be > 0"),
        (["variant.arch=vgg16", "variant.final_layer=relu5_4"], UserError, re.escape(NO_RELU5_4)),
        (["optim=lbfgs", "run.seeds=[0,1]"], SpecError, r"L-BFGS's history would couple the seeds"),
        (["run.seeds=[0,0]"], SpecError, r"run\.seeds=\[0, 0\] repeats a seed"),
        (["run.seeds=[]"], SpecError, r"run\.seeds is empty"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else getattr(value, "__name__", "match"),
)
def test_bad_values_are_refused_naming_the_value(store: Path, overrides: list[str], error: type, pattern: str) -> None:
    """The spec's checks, and the network's check of the final layer (a UserError the spec raises)."""
    refused(store, overrides, error, pattern)


def test_missing_and_unreadable_images(store: Path, tmp_path: Path) -> None:
    refused(store, [f"images.content={tmp_path / 'nope.jpg'}"], DataError, r"image file not found: .*nope\.jpg")
    (tmp_path / "text.png").write_text("hello")
    refused(store, [f"images.styles=[{tmp_path / 'text.png'}]"], ImageError, r"text\.png as an image")


def test_image_too_small_for_the_network(store: Path) -> None:
    """16 px halves four times to 1 px at relu5_1; 8 px would vanish: refused with the fix."""
    refused(
        store, ["images.width=8"], ImageError,
        r"at images\.width=8 the content would be 8x8 px, and the network needs at least 16 px on each side: "
        r"use images\.width=16 or more",
    )  # fmt: skip


def test_memory_estimate_refuses_a_size_that_cannot_fit(store: Path) -> None:
    message = refused(store, ["images.width=200000"], MemoryEstimateError, r"200000x200000 px transfer")
    suggested = int(message.split("use images.width=")[1].split()[0])
    assert 16 <= suggested < 200000


def test_memory_check_counts_batched_seeds(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """4 batched seeds where one seed fits but four do not: refused, naming the batch and the way out; the same
    seeds one after another pass the check."""
    seeds = ["run.seeds=[0,1,2,3]", "run.batch_seeds=true", "run.activation_checkpointing=false"]
    spec = from_config(config(run_overrides(store, 2) + seeds))
    cpu = torch.device("cpu")
    one, four = (
        memory.estimate(memory.workload(replace(spec, batch_seeds=b), cpu, False)).total_bytes for b in (False, True)
    )
    assert one < four
    monkeypatch.setattr(memory, "available_bytes", lambda device: int((one + four) / 2 / memory.SAFETY))
    message = refused(
        store, seeds, MemoryEstimateError, r"16x16 px transfer of 4 batched seeds \(run\.seeds=\[0, 1, 2, 3\]\)"
    )
    assert ": set run.batch_seeds=false (one seed after another) (or run.memory_check=false" in message
    assert memory.fit(replace(spec, batch_seeds=False), cpu).engine.checkpointing is False  # one by one fits


def test_weights_of_the_wrong_architecture_name_layer_and_shapes(tmp_path: Path) -> None:
    vgg16 = {
        f"features.{i}.weight": w
        for i, (w, _) in zip(
            [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28], random_weights("vgg16").convs, strict=True
        )
    }
    vgg16 |= {
        f"features.{i}.bias": b
        for i, (_, b) in zip(
            [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28], random_weights("vgg16").convs, strict=True
        )
    }
    torch.save(vgg16, tmp_path / "vgg16.pth")
    with pytest.raises(WeightsError, match=r"no features\.16\.weight/bias for conv3_4.*sit where vgg16 has them"):
        load_weights("file", "vgg19", path=tmp_path / "vgg16.pth")

    wrong = dict(vgg16)
    wrong["features.2.weight"] = torch.zeros(32, 64, 3, 3)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(
        WeightsError, match=r"conv1_2 \(features\.2\.weight\) has shape \(32, 64, 3, 3\), vgg16 needs \(64, 64, 3, 3\)"
    ):
        load_weights("file", "vgg16", path=tmp_path / "wrong.pth")

    (tmp_path / "junk.pth").write_bytes(np.random.RandomState(0).bytes(256))
    with pytest.raises(WeightsError, match=r"cannot read .*junk\.pth as a torch state dict"):
        load_weights("file", "vgg19", path=tmp_path / "junk.pth")
    (tmp_path / "junk.mat").write_bytes(b"MATLAB? no")
    with pytest.raises(WeightsError, match=r"cannot read .*junk\.mat as a MatConvNet \.mat file"):
        load_weights("matconvnet", "vgg19", path=tmp_path / "junk.mat")


def test_weights_that_cannot_be_downloaded_say_where_to_put_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No network here, and none in CI either: a proxy on a closed port makes the refusal certain."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(WeightsError, match=r"cannot download .*vgg19.*: put that file at .*checkpoints/vgg19"):
        load_weights("torchvision", "vgg19")


def test_unreachable_tracking_server_fails_before_computing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://user:hunter2secret@127.0.0.1:{free_port()}")
    started = time.perf_counter()
    with pytest.raises(
        TrackingError, match=r"MLFLOW_TRACKING_URI=http://user:\*\*\*@127\.0\.0\.1:\d+ does not answer"
    ) as caught:
        execute(config(run_overrides(tmp_path, 2)))
    assert time.perf_counter() - started < 10  # not MLflow's minutes of retries
    assert "hunter2secret" not in str(caught.value)


def test_unknown_variant_lists_the_choices_in_one_line() -> None:
    with pytest.raises(HydraException) as caught:
        composed(["variant=nope"])
    assert one_line(caught.value) == (
        f"variant=nope is not a choice: choose one of {', '.join(variant_names())} (or add conf/variant/nope.yaml)"
    )


def cli(args: list[str], folder: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "ablation.run", *args],
        cwd=PROJECT,
        env=store_env(folder, fresh=True) | env,
        capture_output=True,
        text=True,
    )


@pytest.mark.slow
def test_cli_unknown_variant_one_line_exit_2(tmp_path: Path) -> None:
    done = cli(run_overrides(tmp_path) + ["variant=nope"], tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: variant=nope is not a choice: choose one of {', '.join(variant_names())} "
        "(or add conf/variant/nope.yaml)"
    )


def test_traceback_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """cli() sets HYDRA_FULL_ERROR=1 itself, marked, to catch Hydra's errors: that alone must not mean 'debug'."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    assert not debug_requested({"run": {"debug": False}})
    assert debug_requested({"run": {"debug": True}})
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    assert debug_requested({"run": {}})
    monkeypatch.setenv(_CLI_MARK, "1")
    assert not debug_requested({"run": {}})


@pytest.mark.slow
def test_cli_final_layer_the_architecture_lacks_is_one_line_and_an_unread_one_one_warning(tmp_path: Path) -> None:
    """A value the spec refuses (the same path as any bad value: test_bad_values_are_refused_naming_the_value has
    the messages) is one line and exit code 2, refused before the store was touched."""
    done = cli(run_overrides(tmp_path) + ["variant=vgg16", "variant.final_layer=relu5_4"], tmp_path)
    assert (done.returncode, done.stderr.strip()) == (2, f"error: {NO_RELU5_4}")
    assert not (tmp_path / "mlflow.db").exists()
    done = cli(run_overrides(tmp_path, 2) + ["variant=tanh_last_relu", "judge.enabled=false"], tmp_path)
    warned = [line for line in (done.stdout + done.stderr).splitlines() if "changes nothing" in line]  # Hydra: stdout
    assert done.returncode == 0 and len(warned) == 1, done.stderr
    assert warned[0].endswith(
        "tanh at relu5_4 changes nothing: the network stops at relu5_1, the deepest layer a loss reads"
    )
