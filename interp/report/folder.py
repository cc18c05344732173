"""Ownership of a report folder: one writer at a time, interp's own files only, the folder as a union of parts.

* ``lock(out)``: ``interp.io.FolderLock`` on ``out`` for the whole run (pid, host, start time; a lock whose
  process is gone is taken over with a note); a second writer gets ``ReportError`` naming the holder.
* ``own_files(out)``: the files interp wrote there — ``run.json``, ``manifest.json``, the files the manifest
  lists and every complete part (``parts/<analysis>.json`` and the tables it names). ``--force`` removes these
  and nothing else (``clear_own``); a folder that is not a report folder is never written into.
* ``other_parts(out, names, order)``: complete parts of analyses not in this run; the top-level files are
  rebuilt from this run's parts and these (a subset run adds or refreshes parts, never drops the others).

Tested in ``tests/integration/test_report_folder.py``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from .. import io
from .config import ReportError

PARTS = "parts"
TOP_FILES = ("run.json", "manifest.json", "scores.parquet", "scores.csv", "per_token.parquet", "report.html",
             "roles.parquet")


def lock(out: Path) -> io.FolderLock:
    """The folder's exclusive lock, taken; ``ReportError`` (one line) when another live process holds it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", io.StaleLockWarning)
        try:
            held = io.FolderLock(out).acquire()
        except io.FolderLocked as e:
            raise ReportError(f"another interp run is writing this folder: {e}") from None
    for w in caught:
        if issubclass(w.category, io.StaleLockWarning):
            print(f"note: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return held


def part_meta(out: Path, name: str) -> dict | None:
    """The meta of a complete part (its ``.json`` read and every table it names present), else ``None``."""
    path = out / PARTS / f"{name}.json"
    try:
        meta = io.read_json(path)
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or "params_hash" not in meta or "scores" not in meta.get("tables", []):
        return None
    if not all((out / PARTS / f"{name}.{t}.parquet").is_file() for t in meta["tables"]):
        return None
    return meta


def _part_names(out: Path) -> list[str]:
    folder = out / PARTS
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.json") if part_meta(out, p.stem) is not None)


def part_files(out: Path, name: str) -> list[str]:
    meta = part_meta(out, name) or {}
    files = [f"{PARTS}/{name}.json"] + [f"{PARTS}/{name}.{t}.parquet" for t in meta.get("tables", [])]
    return files + [p for p in meta.get("official", []) if not Path(p).is_absolute()]


def own_files(out: Path) -> set[str]:
    """Paths (relative to ``out``) of the files interp wrote in ``out``, as far as the folder itself records."""
    manifest = _read(out / "manifest.json")
    own = set()
    if manifest or (out / "run.json").is_file():  # an interp folder: its fixed names (a run may have stopped
        own |= set(TOP_FILES)                      # before manifest.json listed them)
    own |= {p for key in ("files", "tables") for p in manifest.get(key, []) if isinstance(p, str)}
    for name in _part_names(out):
        own |= set(part_files(out, name))
    return {p for p in own if (out / p).is_file()}


def _read(path: Path) -> dict:
    try:
        obj = io.read_json(path)
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def clear_own(out: Path, names=None) -> None:
    """Delete interp's own files (all, or only the parts of analyses ``names``); the user's stay."""
    if names is None:
        files = own_files(out)
    else:
        files = {f for n in names for f in part_files(out, n) if (out / f).is_file()}
    for rel in sorted(files):
        (out / rel).unlink()
    for sub in ("tables", "official", PARTS):
        for folder in sorted((out / sub).glob("**/"), key=lambda p: -len(p.parts)) if (out / sub).is_dir() else []:
            try:
                folder.rmdir()  # empty folders only
            except OSError:
                pass


def other_parts(out: Path, names, order=()) -> list[str]:
    """Complete parts in ``out`` of analyses not in ``names``, in the previous manifest's order (``order``)
    then by name."""
    found = [n for n in _part_names(out) if n not in names]
    return [n for n in order if n in found] + [n for n in found if n not in order]


def prune_tables(out: Path, keep, own) -> None:
    """Remove interp's ``tables/*`` (``own``: ``own_files`` before this run wrote) not in ``keep``: no stale table
    of an earlier run stays."""
    for rel in sorted(own):
        if rel.startswith("tables/") and rel not in keep and (out / rel).is_file():
            (out / rel).unlink()
