"""The issues' targets (issue 12, the CPU's raised by issue 17) evaluated on a bench's results: each passes,
fails, or says what it needs."""

from __future__ import annotations

from typing import Any

CPU_SIZE_PX = 256  # the CPU targets are VGG19 ``original`` at 256 px, default settings


def target(
    name: str,
    value: float | None,
    op: str,
    bound: float,
    needs: str,
    quartiles: tuple[float, float] | None = None,
    ceiling: float | None = None,
) -> dict[str, Any]:
    """One target: ``pass`` True/False when measured, None (with ``note``: what it needs) when not; ``quartiles``
    where the value is a median of ratios that spread; ``ceiling`` the most the value can reach on this machine
    (a speed-up over the strong baseline at 100% of the per-layer limit), so that a FAIL says whether code can
    still close it here."""
    passed = None if value is None else (value >= bound if op == ">=" else value <= bound)
    return {"target": name, "value": value, "op": op, "bound": bound, "pass": passed, "note": needs,
            "quartiles": quartiles, "ceiling": ceiling}  # fmt: skip


def engine_row(rows: list[dict[str, Any]], width: int, contender: str) -> dict[str, Any] | None:
    """The row of ``contender`` (e.g. fp32/nhwc) for ``original`` at content width ``width``."""
    found = [r for r in rows if r["variant"] == "original" and r["size_wh"].startswith(f"{width}x")]
    return next((r for r in found if r["contender"] == contender), None)


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The CPU targets read each precision's default layout on this device (``default_layouts``); bf16 only
    where the CPU has native bf16; the GPU targets only from a CUDA run."""
    rows, layouts, native = results["rows"], results["default_layouts"], results["native_bf16"]
    cpu = not results["machine"]["device"].startswith("cuda")
    fp32 = engine_row(rows, CPU_SIZE_PX, f"fp32/{layouts['fp32']}") if cpu else None
    bf16 = engine_row(rows, CPU_SIZE_PX, f"bf16/{layouts['bf16']}") if cpu and native else None
    needs = f"a CPU run of original at {CPU_SIZE_PX} px with fp32/{layouts['fp32']} and the baselines"
    no_bf16 = "" if native else "; this CPU has no native bf16"
    deviation = results.get("deviation") or {}
    at_target = deviation.get("iterations") == 300 and deviation.get("size_px") == 128 and native
    full, batched = results.get("full_run") or {}, results.get("batched") or {}
    batch_ok = not cpu and batched.get("seeds") == 4 and batched.get("size_px") == 256
    return [
        target("CPU fp32 speed-up over the strong baseline, VGG19 256 px", fp32 and fp32["speedup_strong"], ">=",
               1.25, needs, fp32 and fp32.get("speedup_strong_quartiles"), fp32 and fp32.get("strong_ceiling")),
        target("CPU fp32 share of the per-layer kernel limit, VGG19 256 px", fp32 and fp32["limit_share"], ">=",
               0.92, needs, fp32 and fp32.get("limit_share_quartiles")),
        target("CPU bf16 speed-up over our fp32, VGG19 256 px", bf16 and fp32 and fp32["median_ms"] / bf16["median_ms"],
               ">=", 1.7, f"fp32 and bf16 at 256 px{no_bf16}"),
        target("bf16 final total within 2% of fp32 (300 it, 128 px)",
               deviation.get("rel_deviation", {}).get("bf16") if at_target else None, "<=", 0.02,
               f"--precision fp32,bf16 --check-iters 300 --check-size 128{no_bf16}"),
        target("GPU: 1000 iterations of original at 512 px, s", full.get("best_s"), "<=", 10.0,
               "a CUDA run with 512 px"),
        target("GPU: 4 batched seeds at 256 px vs one, time ratio", batched.get("time_ratio") if batch_ok else None,
               "<=", 1.5, "a CUDA run with 4 seeds at 256 px"),
    ]  # fmt: skip
