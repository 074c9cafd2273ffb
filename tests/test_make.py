"""The Makefile: every target says what it does in `make help`, `make bench` runs the benchmark, and
`make test-fast` the tests not marked slow."""

import re
import subprocess

import pytest

from tests.support import PROJECT

pytestmark = pytest.mark.slow  # starts make (see pyproject's markers)


def make(*args: str) -> str:
    done = subprocess.run(["make", "-s", *args], cwd=PROJECT, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def test_make_bench_runs_the_benchmark() -> None:
    assert "-m ablation.bench" in make("-n", "bench", "BENCH_ARGS=--quick")


def test_make_check_cuda_runs_the_gpus_tests_the_cuda_bench_its_memory_table_then_the_suite() -> None:
    lines = make("-n", "-o", "install", "check-cuda").splitlines()
    # make -k: each stage runs even when one before it failed (a lent GPU's time is short)
    assert lines[0].endswith("make -k test-cuda bench-cuda memory-cuda test PYTEST_ARGS=-v")
    assert lines[1].startswith("ABLATION_TEST_CUDA=1 ") and lines[1].endswith("tests/cuda")  # GPUs shown to them
    assert [line.split(" -m ")[1] for line in lines[2:4]] == [
        "ablation.bench --device cuda --variants original --profile",
        "ablation.bench --memory --device cuda",
    ]
    assert lines[4].endswith("--durations=15 -v tests")  # make test, naming failing tests as they happen


def test_make_test_fast_runs_the_tests_not_marked_slow_and_make_test_all() -> None:
    def command(*args: str) -> str:
        return " ".join(make("-n", "-o", "install", *args).split())  # an empty PYTEST_ARGS leaves two spaces

    assert '-m "not slow" tests' in command("test-fast")
    assert "-m pytest" in command("test") and "not slow" not in command("test")
    assert "--durations=15 -v tests" in command("test", "PYTEST_ARGS=-v")  # more options, e.g. -v or -x


def test_make_help_lists_every_target_with_its_description() -> None:
    targets = set(re.findall(r"^([a-z][a-z-]*):", (PROJECT / "Makefile").read_text(), re.MULTILINE))
    listed = dict(re.findall(r"^  make (\S+)\s+(.+)$", make("help"), re.MULTILINE))
    assert targets <= set(listed), f"targets without a '## description': {sorted(targets - set(listed))}"
    assert all(description.strip() for description in listed.values())
