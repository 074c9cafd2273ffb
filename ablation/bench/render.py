"""bench.md and bench.json from a bench's results: the tables a reader compares, and the targets, pass or FAIL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONTENDERS = (
    "`tutorial`: torchvision `features` through relu5_x, parameters requiring grad, pools rounding down, NCHW, "
    "`.item()` per step. `strong`: what the fastest published PyTorch implementations run: frozen, truncated "
    "after the deepest layer read, in-place ReLU, pools rounding up, plain autograd Grams, `torch.optim.Adam`, "
    "NCHW. Engine: precision/layout. vs tutorial, vs strong: the median over the rounds of their time / this "
    "one's (each round times every contender once). GFLOP: convolutions only (forward; input gradients up to "
    "the deepest layer read; weight gradients for the tutorial). Efficiency: achieved / the conv peak of that "
    "precision. Limit ms: the median of this iteration's kernels run alone at their own shapes (each conv's "
    "forward and input gradient, each style layer's Gram forward and backward, same precision and layout), one "
    "sample a round beside the contenders; of limit: the median over the rounds of the limit's time / this "
    "one's. Step-0 loss: the start image's total (checked equal for every fp32 contender that solves "
    "the same problem; the tutorial's pools differ unless both sides are multiples of 16)."
)


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "n/a" if value is None else format(value, spec)


def _layouts(results: dict[str, Any]) -> str:
    """The layout ``auto`` gives each precision here: one word where they agree (every CPU so far)."""
    layouts = results["default_layouts"]
    if len(set(layouts.values())) == 1:
        return next(iter(layouts.values()))
    return ", ".join(f"{p} {layout}" for p, layout in layouts.items())


def _header(results: dict[str, Any], command: str) -> list[str]:
    m, s = results["machine"], results["settings"]
    processor = m["gpu_name"] if m["device"].startswith("cuda") else m["cpu_model"]
    return [
        "# Benchmark: engine vs baselines vs the per-layer limit",
        "",
        f"Command: `{command}`  ",
        f"Machine: {m['device']}, {processor} ({m['cpu_capability']}), {m['cpu_cores']} cores, "
        f"{m['torch_threads']} torch threads, torch {m['torch']}, load average {fmt(m['load_average_1m'], '.2f')} "
        f"at the start; default layout here (`run.channels_last=auto`): {_layouts(results)}  ",
        f"Weights: {', '.join(f'{a} {src}' for a, src in results['weights'].items())} "
        "(timing does not depend on the values; the loss deviation does)  ",
        f"Timing: {s['iters']} iterations per contender in samples of {s['chunk']}, {s['warmup']} warm-up "
        f"sample(s), contenders interleaved; {results['bench_s']:.0f} s in all.",
        "",
        "## Machine peak (same run)",
        "",
        "| kernel | shape | GF/s |",
        "|---|---|---:|",
        *[
            f"| {key.replace('_', ' ')} | {results['peak_shapes'][key.split('_')[0]]} | {value:.0f} |"
            for key, value in results["peaks_gflops"].items()
        ],
    ]


def _rows(results: dict[str, Any]) -> list[str]:
    memory = "allocated tensors" if results["machine"]["device"].startswith("cuda") else "peak resident set, approx."
    lines = [
        "",
        "## Per iteration",
        "",
        CONTENDERS,
        f"Peak memory: held tensors + the iteration's peak ({memory}).",
        "",
    ]
    lines += [
        "| variant | size | contender | median ms | min ms | vs tutorial | vs strong | GFLOP/it | GF/s | efficiency "
        "| limit ms | of limit | peak MiB | step-0 loss |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['variant']} | {r['size_wh']} | {r['contender']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | "
            f"{fmt(r['speedup_tutorial'], '.2f')} | {fmt(r['speedup_strong'], '.2f')} | {r['gflop']:.1f} | "
            f"{r['gflops']:.0f} | {r['efficiency']:.0%} | {fmt(r['limit_ms'])} | {fmt(r['limit_share'], '.0%')} | "
            f"{fmt(r['peak_mib'], '.0f')} | {r['step0_total']:.6g} |"
        )
    stolen = {(r["variant"], r["size_wh"]): r.get("stolen_share") for r in results["rows"]}
    if any(v is not None for v in stolen.values()):
        lines += ["", "CPU time the hypervisor gave other guests during the rounds (noise the timings cannot see): "
                  + ", ".join(f"{v} {size} {fmt(s, '.1%')}" for (v, size), s in stolen.items()) + "."]  # fmt: skip
    return lines


def _extras(results: dict[str, Any]) -> list[str]:
    lines = []
    if check := results.get("deviation"):
        lines += ["", "## Loss deviation of reduced precision", ""]
        lines += [
            f"original at {check['size_px']} px, {check['iterations']} iterations, seed 0: final total {p} "
            f"{check['final_total'][p]:.6g} vs fp32 {check['final_total']['fp32']:.6g}: {dev:.2%}."
            for p, dev in check["rel_deviation"].items()
        ]
    if batched := results.get("batched"):
        lines += [
            "",
            "## Batched seeds",
            "",
            f"original at {batched['size_px']} px, {batched['layout']}: one seed "
            f"{batched['one_seed_ms']:.1f} ms/it, {batched['seeds']} seeds as one batch {batched['batch_ms']:.1f} "
            f"ms/it: {batched['time_ratio']:.2f}x the time for {batched['seeds']}x the work.",
        ]
    if full := results.get("full_run"):
        lines += ["", "## Whole runs (CUDA)", "", f"original at 512 px, {full['iterations']} iterations:"]
        lines += [f"- {name}: {sec:.2f} s" for name, sec in full["seconds"].items()]
    if profile := results.get("profile"):
        ms = profile["ms_per_iteration"]
        lines += [
            "",
            f"## Where the time goes ({profile['variant']}, {profile['size_px']} px, "
            f"{profile['contender']}, torch.profiler, {profile['iterations']} iterations)",
            "",
            "| category | ms/it | share |",
            "|---|---:|---:|",
        ]
        lines += [f"| {k} | {v:.1f} | {v / sum(ms.values()):.0%} |" for k, v in ms.items()]
    return lines


def _targets(results: dict[str, Any]) -> list[str]:
    lines = ["", "## Targets", "", "| target | measured | bound | result |", "|---|---:|---:|---|"]
    for t in results["targets"]:
        verdict = {True: "pass", False: "FAIL", None: f"not measured (needs {t['note']})"}[t["pass"]]
        if t["pass"] is False and t.get("ceiling") is not None and t["ceiling"] < t["bound"]:
            verdict += f" (out of reach here: {t['ceiling']:.2f} at 100% of the per-layer limit)"
        spread = f" (quartiles {t['quartiles'][0]:.2f}-{t['quartiles'][1]:.2f})" if t.get("quartiles") else ""
        lines.append(f"| {t['target']} | {fmt(t['value'], '.3g')}{spread} | {t['op']} {t['bound']:g} | {verdict} |")
    return lines


def to_markdown(results: dict[str, Any], command: str) -> str:
    return "\n".join(_header(results, command) + _rows(results) + _extras(results) + _targets(results)) + "\n"


def write(results: dict[str, Any], command: str, out: Path) -> list[Path]:
    """``out``/bench.json (everything, samples included) and ``out``/bench.md."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps({"command": command, **results}, indent=2) + "\n")
    (out / "bench.md").write_text(to_markdown(results, command))
    return [out / "bench.md", out / "bench.json"]
