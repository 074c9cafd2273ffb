"""The outbox: a run's writes leave the loop's path through one bounded queue, sent in order by one thread.

The loop puts a record and computes on; the sender delivers records one at a time, in the order they were put, each
until it is stored (:mod:`ablation.store.tolerance` says which errors are an outage and keeps the outage clock). So a
run computes through an outage of its server, and the server receives everything in order once it is back. A record
is removed only once delivered, and each kind is stored once however often it is sent (a response lost after the
server stored a record makes the sender send it again):

``batch``  metrics, params and tags of one run (``log_batch``). A metric carries the time its step was computed, and
           MLflow keeps one row per key, step, time and value.
``file``   a local file into the run's artifacts (``log_artifact``): sent twice, it replaces itself. Images of the
           series get their names here, once (:func:`image_files`), rather than a random one per upload.
``end``    the run's final status (``set_terminated``).

Boundaries wait (:meth:`Outbox.deliver`): a run's end, a sweep's job record and its summary are stored before the
caller goes on, as long as the patience lasts. What cannot be delivered within it is *kept*: written to a folder under
``tracking.unsent_dir`` (default ``runs/unsent/<store>/``) with its files, checkpoints included, and every later record
of the process follows it there. The next job that opens the store (a re-run of the sweep, the same command)
sends what was kept, in order, before it looks anything up (:func:`send_unsent`), so the store sees a stopped run's
steps, checkpoint and KILLED status before it looks for a run to continue, and a finished run's results before it
skips the job.

Why not MLflow's own asynchronous logging (``log_batch(..., synchronous=False)``, ``MLFLOW_ENABLE_ASYNC_LOGGING``):
MLflow 3 hands each batch to a pool of 10 threads (``MLFLOW_ASYNC_LOGGING_THREADPOOL_SIZE``), so batches can land out
of order; a batch that still fails after MLflow's retries is logged as an error and dropped; its queue has no bound;
images go through a second queue with 5 threads of its own, and plain files (the checkpoint) and the end status
through none, so nothing would keep a checkpoint behind the steps it follows.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import itertools
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking.multimedia import compress_image_size, convert_to_pil_image
from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_IMAGES

from ablation.store import tolerance
from ablation.store.connection import raw_client, redact_uri, tracking_uri

#: Records waiting at most; a full outbox holds the loop back until the server takes some, or the patience runs out.
#: A run puts about one record per heartbeat (2 s) plus its checkpoints and images: hours of outage per run.
MAX_QUEUED = 10_000
#: MLflow's limits of one log_batch request.
MAX_VALUES, MAX_PARAMS, MAX_TAGS = 1000, 100, 100
OPS_FILE = "ops.jsonl"
CLAIMED = ".sending"

log = logging.getLogger(__name__)


@dataclass
class Op:
    """One record to deliver; plain data, so that it can be kept on disk as one JSON line."""

    kind: str  # batch | file | end
    uri: str
    run_id: str
    metrics: list[list[Any]] = field(default_factory=list)  # [key, value, timestamp_ms, step]
    params: list[list[str]] = field(default_factory=list)  # [key, value]
    tags: list[list[str]] = field(default_factory=list)  # [key, value]
    file: str | None = None  # a local file; its name is the artifact's
    folder: str | None = None  # the artifact folder
    status: str | None = None  # FINISHED | FAILED | KILLED
    owned: bool = True  # the outbox made the file: it deletes it once sent
    seq: int = -1
    superseded: bool = False  # a later record replaces this file: not sent

    def to_line(self, base: Path) -> str:
        data = asdict(self)
        for key in ("owned", "seq", "superseded"):
            del data[key]
        if self.file is not None:
            data["file"] = Path(self.file).relative_to(base).as_posix()
        return json.dumps(data)

    @classmethod
    def from_line(cls, line: str, base: Path) -> Op:
        data = json.loads(line)
        if data.get("file") is not None:
            data["file"] = str(base / data["file"])
        return cls(**data, owned=False)

    @property
    def artifact(self) -> tuple[str, str, str | None, str]:
        return (self.uri, self.run_id, self.folder, Path(self.file or "").name)


def batch(run_id: str, metrics=(), params=(), tags=()) -> Op:
    """A ``log_batch`` record for the current store; values as MLflow entities' plain fields."""
    return Op(
        "batch", tracking_uri(), run_id,
        metrics=[[m.key, m.value, m.timestamp, m.step] for m in metrics],
        params=[[p.key, p.value] for p in params],
        tags=[[t.key, t.value] for t in tags],
    )  # fmt: skip


def send(op: Op) -> None:
    """Deliver one record (raises what MLflow raises)."""
    store = raw_client(op.uri)
    if op.kind == "batch":
        store.log_batch(
            op.run_id,
            metrics=[Metric(k, float(v), int(t), int(s)) for k, v, t, s in op.metrics],
            params=[Param(k, v) for k, v in op.params],
            tags=[RunTag(k, v) for k, v in op.tags],
        )
    elif op.kind == "file":
        store.log_artifact(op.run_id, str(op.file), op.folder)
    elif op.kind == "end":
        store.set_terminated(op.run_id, op.status)
    else:
        raise ValueError(f"unknown record kind {op.kind!r}")


def fits_with(ops: list[Op], op: Op) -> bool:
    """Whether ``op`` can join the batches ``ops`` in one ``log_batch`` request: same run, no param twice, within
    MLflow's limits (1000 values in all, 100 params, 100 tags)."""
    first = ops[0]
    if not (first.kind == op.kind == "batch" and (first.uri, first.run_id) == (op.uri, op.run_id)):
        return False
    params = [p[0] for o in [*ops, op] for p in o.params]
    tags = {t[0] for o in [*ops, op] for t in o.tags}
    values = sum(len(o.metrics) for o in [*ops, op]) + len(params) + len(tags)
    return len(set(params)) == len(params) <= MAX_PARAMS and len(tags) <= MAX_TAGS and values <= MAX_VALUES


def merged(ops: list[Op]) -> Op:
    """One batch holding ``ops`` in order; of a tag set twice, the later value (a heartbeat's latest)."""
    if len(ops) == 1:
        return ops[0]
    tags = {k: v for o in ops for k, v in o.tags}
    return Op(
        "batch", ops[0].uri, ops[0].run_id, metrics=[m for o in ops for m in o.metrics],
        params=[p for o in ops for p in o.params], tags=[[k, v] for k, v in tags.items()],
    )  # fmt: skip


class Spool:
    """Records kept on disk: ``ops.jsonl`` (one record a line, in order) and ``files/<n>/<name>``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        (folder / "files").mkdir(parents=True, exist_ok=True)
        self.count = 0
        self.checkpoints = 0

    def append(self, op: Op) -> None:
        if op.superseded:
            return
        if op.file is not None:
            kept = self.folder / "files" / str(self.count) / Path(op.file).name
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(op.file, kept)
            if op.owned:
                os.unlink(op.file)
            op.file = str(kept)
            self.checkpoints += op.folder == "checkpoint"
        with open(self.folder / OPS_FILE, "a") as handle:
            handle.write(op.to_line(self.folder) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.count += 1


def store_key(uri: str) -> str:
    """A folder name for a store: readable, and unique by a short hash (``127.0.0.1_5000-1a2b3c4d``)."""
    readable = "".join(c if c.isalnum() or c in ".-" else "_" for c in redact_uri(uri).split("://", 1)[-1])
    return f"{readable.strip('_')[-60:]}-{hashlib.sha256(uri.encode()).hexdigest()[:8]}"


class Outbox:
    """The process's queue of records and the thread that sends them (one of each per process)."""

    def __init__(self, max_queued: int = MAX_QUEUED) -> None:
        self.max_queued = max_queued
        self.scratch = Path(tempfile.mkdtemp(prefix="nst-outbox-"))  # files of queued records
        self.cond = threading.Condition()
        self.ops: deque[Op] = deque()
        self.next_seq, self.done_seq, self.files = 0, -1, 0
        self.failures: list[tuple[Op, Exception]] = []
        self.latest: dict[tuple[str, str, str | None, str], Op] = {}
        self.spool: Spool | None = None  # once records are kept on disk, every later record follows them
        self.thread: threading.Thread | None = None

    def stage(self, name: str) -> Path:
        """A fresh path named ``name`` among the outbox's own files, for the caller to write the file a record
        sends (a copy: the caller's own file may be rewritten or deleted at once)."""
        with self.cond:
            self.files += 1
            folder = self.scratch / str(self.files)
        folder.mkdir()
        return folder / name

    def put(self, op: Op) -> None:
        """Queue ``op`` behind every earlier record; waits only while the outbox is full and the server is not
        given up on. Raises a record's permanent failure (a 4xx answer) here, in the caller's thread."""
        self.raise_failure()
        with self.cond:
            if self.spool is not None:
                self.spool.append(op)
                return
            while len(self.ops) >= self.max_queued and not tolerance.lost():
                self.cond.wait(0.5)
            op.seq, self.next_seq = self.next_seq, self.next_seq + 1
            if op.kind == "file":
                earlier = self.latest.get(op.artifact)
                if earlier is not None and self.ops and earlier is not self.ops[0] and earlier.seq > self.done_seq:
                    earlier.superseded = True  # a later copy replaces it: never sent (and not in flight)
                self.latest[op.artifact] = op
            self.ops.append(op)
            if self.thread is None:
                self.thread = threading.Thread(target=self._send_forever, name="nst-outbox", daemon=True)
                self.thread.start()
            self.cond.notify_all()

    def raise_failure(self) -> None:
        with self.cond:
            failure = self.failures.pop(0) if self.failures else None
        if failure is not None:
            raise failure[1]

    def deliver(self, wait_s: float | None = None) -> bool:
        """Wait until every record put so far is stored: True; False when the patience ran out first (or
        ``wait_s`` passed, or records are already kept on disk). Raises a permanent failure."""
        deadline = None if wait_s is None else time.monotonic() + wait_s
        with self.cond:
            target = self.next_seq - 1
            while self.done_seq < target and self.spool is None:
                if tolerance.lost() or (deadline is not None and time.monotonic() > deadline):
                    return False
                if self.thread is None or not self.thread.is_alive():
                    raise RuntimeError("the outbox's sender thread has stopped: records cannot be sent")
                self.cond.wait(0.25)
            delivered = self.spool is None
        self.raise_failure()
        return delivered

    def keep(self) -> Path:
        """Write every undelivered record to disk (in order, files with them) and send nothing more: this process
        ends without the server, and the next one to open the store sends them (:func:`send_unsent`)."""
        with self.cond:
            if self.spool is None:
                stamp = time.strftime("%Y%m%d-%H%M%S")
                name = f"{stamp}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
                self.spool = Spool(tolerance.unsent_dir() / store_key(tracking_uri()) / name)
                for op in self.ops:
                    self.spool.append(op)
                self.ops.clear()
                self.done_seq = self.next_seq - 1
                self.cond.notify_all()
            return self.spool.folder

    def kept_note(self) -> str:
        """What was kept and what to do (empty when nothing was)."""
        spool = self.spool
        if spool is None:
            return ""
        n = spool.checkpoints
        what = f"{spool.count} records" + (f" with {n} checkpoint{'s' * (n > 1)}" if n else "")
        return (
            f"; {what} kept in {spool.folder}: once the server answers, re-run (a sweep: the same command; one run: "
            "add run.resume=true) to send them and continue"
        )

    def _send_forever(self) -> None:
        attempt, alone_until = 0, -1  # records up to seq alone_until go one by one (a merged request was refused)
        while True:
            with self.cond:
                while not self.ops:
                    self.cond.wait()
                ops = self._head() if self.ops[0].seq > alone_until else [self.ops[0]]
            if ops[0].superseded:
                self._done(ops)
                continue
            started = time.monotonic()
            try:
                send(merged(ops))
            except Exception as err:  # noqa: BLE001 - sorted below: an outage is retried, anything else reported
                if self.spool is not None:
                    continue  # kept on disk meanwhile, its file with it: nothing more to send
                if tolerance.limit_s() is not None and tolerance.is_transient(err):
                    tolerance.failed(started, err)
                    time.sleep(tolerance.backoff_s(attempt))
                    attempt += 1
                    continue
                if len(ops) > 1:  # which of them was refused: send them one by one
                    alone_until = ops[-1].seq
                    continue
                with self.cond:
                    self.failures.append((ops[0], err))
            else:
                tolerance.succeeded()
            attempt = 0
            self._done(ops)

    def _head(self) -> list[Op]:
        """The first record, with the batches of the same run right behind it that fit into one request with it
        (a backlog after an outage goes out in a few requests, not one per sync point)."""
        ops = [self.ops[0]]
        for op in itertools.islice(self.ops, 1, None):
            if not fits_with(ops, op):
                break
            ops.append(op)
        return ops

    def _done(self, ops: list[Op]) -> None:
        with self.cond:
            for op in ops:
                if self.ops and self.ops[0] is op:  # else kept on disk meanwhile (and stored twice: harmless)
                    self.ops.popleft()
                    self.done_seq = op.seq
                    if self.latest.get(op.artifact) is op:
                        del self.latest[op.artifact]
            self.cond.notify_all()
        for op in ops:
            if op.owned and op.file is not None and self.spool is None:
                Path(op.file).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    Path(op.file).parent.rmdir()  # the file's own folder (see stage)

    def close(self) -> None:
        """At exit: deliver what is left within the patience, keep the rest, remove the outbox's own files."""
        try:
            if self.ops and not self.deliver():
                self.keep()
                log.warning("tracking server unreachable at exit%s", self.kept_note())
        except Exception as err:  # noqa: BLE001 - at exit a refusal can only be told
            log.warning("a record was refused by the tracking store at exit: %s", str(err).splitlines()[0][:300])
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)


_outbox: Outbox | None = None
_create = threading.Lock()


def outbox() -> Outbox:
    """The process's outbox (made on first use, closed at exit)."""
    global _outbox
    with _create:
        if _outbox is None:
            _outbox = Outbox()
            atexit.register(_outbox.close)
        return _outbox


def put(op: Op) -> None:
    outbox().put(op)


def settle(wait_s: float | None = None) -> Path | None:
    """A boundary: wait for every record put so far; those the server did not take in time are kept on disk.
    Returns the folder they are kept in (None: all delivered)."""
    box = outbox()
    return None if box.deliver(wait_s) else box.keep()


def image_files(rgb: np.ndarray, key: str, step: int) -> list[Path]:
    """The two files of one image of MLflow's image series (``images/<key>+step+<step>+timestamp+<ms>+<id>.png``
    and its ``+compressed.webp`` preview, as ``MlflowClient.log_image`` names them), named once, here, so that a
    record sent twice replaces itself instead of adding a copy with a new random id."""
    image = convert_to_pil_image(rgb)
    stem = f"{key.replace('/', '~')}+step+{step}+timestamp+{int(time.time() * 1000)}+{uuid.uuid4()}"
    box = outbox()
    full, preview = box.stage(f"{stem}.png"), box.stage(f"{stem}+compressed.webp")
    image.save(full)
    compress_image_size(image).save(preview)
    return [full, preview]


def image_tag() -> tuple[str, str]:
    """The tag MLflow's UI looks for before it shows a run's image series."""
    return MLFLOW_LOGGED_IMAGES, "True"


def send_unsent(uri: str) -> int:
    """Send what earlier processes kept for this store, oldest first, before anything is looked up; returns how many
    records. A folder is claimed by renaming it (so two jobs never send one twice); a record the store refuses (its
    run deleted meanwhile) is skipped with a warning. Past the patience, they are kept again, with this process's."""
    root = tolerance.unsent_dir() / store_key(uri)
    box, sent = outbox(), 0
    if tolerance.limit_s() is None or box.spool is not None or not root.is_dir():
        return 0  # without patience, a record refused for an outage would be dropped: left for a job
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.endswith(CLAIMED)):
        claimed = folder.with_name(folder.name + CLAIMED)
        try:
            folder.rename(claimed)
        except OSError:
            continue  # another job claimed it first
        lines = (claimed / OPS_FILE).read_text().splitlines() if (claimed / OPS_FILE).is_file() else []
        for line in lines:
            box.put(Op.from_line(line, claimed))
        delivered = _deliver_warning_refusals(box, claimed)
        if not delivered:
            box.keep()
        shutil.rmtree(claimed, ignore_errors=True)
        if not delivered:
            raise tolerance.lost_error(f" while sending the records kept in {folder}{box.kept_note()}")
        log.warning("sent %d records kept in %s while the tracking server was unreachable", len(lines), folder)
        sent += len(lines)
    return sent


def _deliver_warning_refusals(box: Outbox, source: Path) -> bool:
    while True:
        try:
            return box.deliver()
        except Exception as err:  # noqa: BLE001 - a refused kept record is reported, the others still sent
            log.warning("a record kept in %s was refused by the store: %s", source, str(err).splitlines()[0][:300])
