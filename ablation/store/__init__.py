"""The store: the only code that imports MLflow (ruff TID251 and ``tests/test_store_boundary.py`` enforce it).

connection the tracking URI, one client per URI, the experiment, provenance tags
runlog     one run as the recorder writes it: params, tags, batched metrics, heartbeat, artifacts, redaction
heartbeat  the tags that tell a live RUNNING run from a dead one
lookup     runs by fingerprint and status: finished (skip), resumable, live or dead (take over)
sweeps     a sweep's parent run, the file its jobs find it by, one record per job, its counts
outcome    the outcome vocabulary of a job (finished, skipped, failed, killed, lost, running)
reader     what the report reads (parents, runs, histories, artifacts) and where it publishes
"""
