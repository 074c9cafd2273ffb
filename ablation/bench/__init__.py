"""The benchmark (``python -m ablation.bench``): settings -> suite (peaks, cases, extras) -> targets -> render.

flops: analytic conv work; probes: peaks, the per-layer limit, memory, the machine; contenders: the engine and
the two baselines as callables; cases: one variant x size timed; breakdown: the profiler's categories.
"""
