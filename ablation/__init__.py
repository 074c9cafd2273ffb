"""nst-ablation: Gatys et al.'s style transfer as anishathalye/neural-style computes it, and an ablation harness
around it (Hydra configs, MLflow runs, sweeps, the report).

A process that imported torch and MLflow holds about a million objects. At exit CPython's last collections walk
them all looking for cycles (1 s of CPU and more per process on a 2-core Xeon), only for the OS to free the memory
anyway. So the package's first exit handler (atexit runs handlers last-registered first: this one runs after MLflow's
and the outbox's) freezes them: every object is still released by reference counting, only the search for cycles
is skipped.
"""

import atexit
import gc

atexit.register(gc.freeze)
