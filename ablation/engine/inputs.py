"""The report's input pair: fetched from upstream into a cache once, checked by SHA-256, never shipped."""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO

from ablation.engine.errors import UserError

_UPSTREAM = "https://raw.githubusercontent.com/anishathalye/neural-style/master/examples"
#: name -> (upstream URL, SHA-256)
KNOWN_IMAGES: dict[str, tuple[str, str]] = {
    "starry-content.jpg": (
        f"{_UPSTREAM}/1-content.jpg",
        "bac8cf149573b86f11f33724574884cb0dbf360b775fe124c6d59bd8483632da",
    ),
    "starry-style.jpg": (
        f"{_UPSTREAM}/1-style.jpg",
        "bd7efa364a0bc3ffcd10abb27d4aaffe97cda3bc4e40011a971202c7febe04c4",
    ),
}


class DataError(UserError):
    """An input that cannot be found, fetched or verified."""


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nst-ablation"


def keep_whole(path: Path, write: Callable[[IO[bytes]], object]) -> bool:
    """Keep a file for later processes: ``write`` fills a file beside ``path``, which is then renamed to it, so a
    process reading meanwhile sees the whole file or none. A cache that cannot be written (a read-only home, a full
    disk; torch's writer raises RuntimeError) only costs a later process the work again, and leaves no part
    behind: False then."""
    part = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as part:
            write(part)
        os.replace(part.name, path)
        return True
    except (OSError, RuntimeError):
        if part is not None:
            Path(part.name).unlink(missing_ok=True)
        return False


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file (``hashlib.file_digest``). Remembered per (path, size, mtime): a sweep run in one process
    would otherwise re-read the 548 MB weights file and every input image for each job and scale."""
    path = Path(path).resolve()
    stat = path.stat()
    return _sha256_of(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: Path, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def resolve_image(name: str) -> Path:
    """An existing path as given; else one of :data:`KNOWN_IMAGES` from ``ABLATION_DATA_DIR`` or the
    cache, downloading it there if missing. Known files are always checked against their SHA-256."""
    path = Path(name).expanduser()
    if path.exists() or name not in KNOWN_IMAGES:
        if not path.is_file():
            raise DataError(f"image file not found: {path.resolve()}")
        return path
    url, sha = KNOWN_IMAGES[name]
    folders = [Path(d) for d in [os.environ.get("ABLATION_DATA_DIR")] if d] + [cache_dir()]
    for folder in folders:
        candidate = folder / name
        if candidate.is_file():
            if file_sha256(candidate) != sha:
                raise DataError(f"{candidate} does not match its SHA-256 {sha[:12]}...: delete it to re-download")
            return candidate
    target = cache_dir() / name
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            partial.write_bytes(response.read())
    except (urllib.error.URLError, OSError) as err:
        raise DataError(
            f"cannot download {url} ({getattr(err, 'reason', err)}): save it as {target} "
            "or set ABLATION_DATA_DIR to a folder holding it"
        ) from err
    if file_sha256(partial) != sha:
        partial.unlink()
        raise DataError(f"{url} did not match its SHA-256 {sha[:12]}...: upstream changed the file?")
    partial.replace(target)
    return target
