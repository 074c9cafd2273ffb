"""nst-ablation: Gatys et al.'s style transfer as anishathalye/neural-style computes it, and an ablation harness
around it (Hydra configs, MLflow runs, sweeps, the report).

The collector and this package's processes: importing torch, MLflow and Hydra makes about a million objects that live
as long as the process, and CPython's full collections walk them all, finding no garbage: 7 times during the imports
(0.85 s of CPU in every job process on a 2-core Xeon) and once more at exit (1.4 s). So ``ablation.run``, what every
job process imports first, imports with the collector off and freezes what the imports made; and the package's first
exit handler (atexit runs handlers last-registered first: after MLflow's and the outbox's) freezes the rest, for
every entry point. Frozen objects are still released by reference counting; only the search for cycles skips them.
"""

import atexit
import gc

atexit.register(gc.freeze)
