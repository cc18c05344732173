"""File I/O for every writer in the tree: atomic writes, one JSONL checkpoint/resume, a folder lock.

- **Atomic writes** (``atomic_path`` and the ``write_*`` / ``save_safetensors`` helpers): the data goes to a temp
  file in the target's folder, is fsync'd, then ``os.replace``d onto the target (atomic within one filesystem,
  which is why the temp file lives in the same folder). A run killed at any moment leaves the previous complete
  file or the new complete file, never a half one; on an error the temp file is removed. New files get the
  usual permissions (``0o666 & ~umask``, not ``mkstemp``'s 0600).
- **``JsonlCheckpoint(path, meta)``**: an append-only JSON-lines file of finished work units. Line 1 is the header
  ``{"meta": meta}`` (the run's settings); each further line is one unit's record, holding its unit key
  (``record["key"]`` by default). A file written with other settings is refused with one line naming the keys
  that differ; every appended line is flushed and fsync'd, so a kill leaves only complete lines, and a torn
  last line (a kill mid-write) is ignored and cut off before the next append. A key written twice counts
  once (the later record wins). The same class records units that finish in any order (a distributed run).
- **``FolderLock(folder)``**: an exclusive lock file ``<folder>/.interp.lock`` holding the holder's pid, host and
  start time, created with ``O_CREAT | O_EXCL`` and removed on exit. A second holder gets ``FolderLocked``
  naming the holder; a stale lock (same host, process gone) is taken over with a ``StaleLockWarning``.

Only the standard library is imported here (``interp.kernels`` uses this module too). Validated in
``tests/unit/test_io.py``: writes killed mid-way (exceptions and a SIGKILLed child process) leave the old file
and no temp file; checkpoints resume after torn lines with no unit counted twice and refuse other settings;
the lock against a second real process, a dead holder and another host.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path

# --- atomic writes ----------------------------------------------------------------------------------------------


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask would briefly reset it for every thread)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not every filesystem can sync a folder; the rename itself is still atomic
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, mode: int = 0o666) -> Iterator[Path]:
    """Yield a temp path next to ``path``; write the file there. On a clean exit the temp file is fsync'd and
    atomically replaces ``path``; on an error it is removed and ``path`` is left as it was.

    ``mode``: permission bits before the umask (``0o777`` for an executable or a shared library)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, mode & ~_umask())
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path, text: str, *, encoding: str = "utf-8") -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def write_html(path, html: str) -> Path:
    return write_text(path, html)


def write_json(path, obj, *, indent: int | None = 2, sort_keys: bool = True, default=str) -> Path:
    """``obj`` as JSON (``json.dumps`` with these options) plus a final newline, atomically."""
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default) + "\n")


def write_parquet(path, df, *, index: bool = False) -> Path:
    """A pandas DataFrame as parquet, atomically."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=index)
    return Path(path)


def write_csv(path, df, *, index: bool = False) -> Path:
    """A pandas DataFrame as CSV, atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=index)
    return Path(path)


def save_torch(path, obj) -> Path:
    """``torch.save(obj)`` atomically (a cache that a killed run must not leave half-written)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def save_safetensors(path, tensors: dict, metadata: dict | None = None) -> Path:
    """``{name: tensor}`` as a safetensors file (tensors made contiguous), atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return Path(path)


def read_json(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


# --- JSONL checkpoint / resume ------------------------------------------------------------------------------------


class CheckpointMismatch(ValueError):
    """A checkpoint file was written by a run with other settings (the message is one line for the user)."""


def _normal(meta):
    """``meta`` as it reads back from JSON (tuples → lists, int keys → str), so comparisons are like for like."""
    return json.loads(json.dumps(meta))


def _differences(old: dict, new: dict) -> str:
    if not isinstance(old, dict) or not isinstance(new, dict):
        return f"{old!r} there, {new!r} now"
    keys = sorted(k for k in set(old) | set(new) if old.get(k, "<absent>") != new.get(k, "<absent>"))
    return "; ".join(f"{k}: {old.get(k, '<absent>')!r} there, {new.get(k, '<absent>')!r} now" for k in keys)


class JsonlCheckpoint:
    """Append-only JSONL record of finished work units, for resuming a killed run.

    ``path``: the ``.jsonl`` file (written, header first, on the first ``add``). ``meta``: the run's settings
    (JSON-serialisable); a file whose header differs raises ``CheckpointMismatch`` naming the differing keys and
    ``hint`` (what to do). ``meta=None``: no header is written or checked, for files whose records carry their
    own settings (a header line, if present, is skipped). ``key``: the record field holding the unit key, or a
    function ``record -> key``. ``fresh=True``: discard what the file holds and start over.

    ``ckpt.done()`` / ``key in ckpt`` / ``ckpt.get(key)`` / ``ckpt.records()`` read it; ``ckpt.add(record)``
    appends one finished unit (flushed and fsync'd before it returns).
    """

    def __init__(self, path, meta: dict | None, *, key: str | Callable[[dict], Hashable] = "key",
                 fresh: bool = False, hint: str = "delete it or pass another checkpoint path"):
        self.path = Path(path)
        self.meta = None if meta is None else _normal(meta)
        self.hint = hint
        self._key = (lambda r: r[key]) if isinstance(key, str) else key
        self._key_name = key if isinstance(key, str) else getattr(key, "__name__", "key")
        self._records: dict = {}
        self._new = True  # nothing on disk yet: the header goes out with the first record
        if fresh:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            self._load()

    # -- reading ---------------------------------------------------------------------------------------------
    def _load(self) -> None:
        raw = self.path.read_bytes()
        cut = len(raw) if raw.endswith(b"\n") or not raw else raw.rfind(b"\n") + 1
        if cut < len(raw):  # a kill mid-write: drop the torn line so the next append starts on a fresh line
            os.truncate(self.path, cut)
        lines = [x for x in raw[:cut].decode("utf-8").splitlines() if x.strip()]
        if not lines:
            return
        self._new = False
        recs = []
        for i, line in enumerate(lines):
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                raise ValueError(f"checkpoint {self.path} line {i + 1} is not valid JSON (the file was edited or "
                                 f"corrupted, not cut by a kill); {self.hint}") from None
        if isinstance(recs[0], dict) and set(recs[0]) == {"meta"}:
            self._check_meta(recs.pop(0)["meta"])
        elif self.meta is not None:
            raise CheckpointMismatch(f"checkpoint {self.path} has no settings header (first line is not "
                                     f'{{"meta": ...}}); {self.hint}')
        for i, rec in enumerate(recs):
            try:
                self._records[self._key(rec)] = rec
            except (KeyError, TypeError):
                raise ValueError(f"checkpoint {self.path}: record {i + 1} has no unit key "
                                 f"{self._key_name!r}; {self.hint}") from None

    def _check_meta(self, old) -> None:
        if self.meta is not None and old != self.meta:
            raise CheckpointMismatch(f"checkpoint {self.path} was written with different settings "
                                     f"({_differences(old, self.meta)}); {self.hint}")

    def __contains__(self, key) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def done(self) -> set:
        """The keys of the finished units."""
        return set(self._records)

    def keys(self) -> list:
        """Finished unit keys in the order they were first written."""
        return list(self._records)

    def get(self, key, default=None):
        return self._records.get(key, default)

    def records(self) -> list[dict]:
        """One record per finished unit (the latest written), in the order the units were first written."""
        return list(self._records.values())

    # -- writing -----------------------------------------------------------------------------------------------
    def add(self, record: dict, *, replace: bool = False) -> dict:
        """Append one finished unit's ``record`` (it must hold its key). A unit already recorded raises unless
        ``replace=True`` (then the new record supersedes the old one, also after a resume)."""
        try:
            k = self._key(record)
        except (KeyError, TypeError):
            raise ValueError(f"a checkpoint record needs its unit key {self._key_name!r}; got fields "
                             f"{sorted(record) if isinstance(record, dict) else type(record).__name__}") from None
        if k in self._records and not replace:
            raise ValueError(f"checkpoint {self.path} already holds unit {k!r}; pass replace=True to supersede it")
        line = json.dumps(record)
        if self._new:
            head = "" if self.meta is None else json.dumps({"meta": self.meta}) + "\n"
            write_text(self.path, head)  # atomically replaces an empty or torn file
            self._new = False
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._records[k] = json.loads(line)
        return record


# --- folder lock --------------------------------------------------------------------------------------------------

LOCK_NAME = ".interp.lock"


class FolderLocked(RuntimeError):
    """The folder is locked by another live process (the message names it and says what to do)."""


class StaleLockWarning(UserWarning):
    """A lock left by a process that no longer runs was taken over."""


def _proc_start(pid: int) -> str | None:
    """The kernel's start time of process ``pid`` (Linux ``/proc``), to tell a reused pid from the holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2:].split()[19]
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    now = _proc_start(pid)
    return start is None or now is None or now == start


class FolderLock:
    """Exclusive lock on ``folder`` (context manager): ``<folder>/.interp.lock`` holds the holder's ``pid``,
    ``host``, ``since`` (ISO time) and a random ``token``; removed on exit (only if it is still this one's).

    A lock held by a live process raises ``FolderLocked``; one whose process is gone (same host, pid not running,
    or the pid now belongs to a process started later) is taken over with a ``StaleLockWarning``. A lock from
    another host is never taken over (its process cannot be checked from here).
    """

    def __init__(self, folder, name: str = LOCK_NAME):
        self.folder = Path(folder)
        self.path = self.folder / name
        self.info: dict | None = None

    def _holder(self) -> tuple[dict | None, bytes]:
        for _ in range(20):  # the holder writes its info right after creating the file: give it a moment
            try:
                raw = self.path.read_bytes()
            except FileNotFoundError:
                return None, b""
            try:
                return json.loads(raw), raw
            except ValueError:
                time.sleep(0.05)
        return {}, raw

    def _is_stale(self, info: dict) -> bool:
        return (info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int)
                and not _alive(info["pid"], info.get("proc_start")))

    def _take_over(self, raw: bytes, info: dict) -> None:
        """Remove the stale lock file holding exactly ``raw`` (rename first: of two processes recovering it at
        once, only one moves it, and one that moved a fresh lock by mistake puts it back)."""
        moved = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, moved)
        except FileNotFoundError:
            return
        try:
            if moved.read_bytes() != raw:
                with contextlib.suppress(FileExistsError):
                    os.link(moved, self.path)
                return
            warnings.warn(f"{self.folder}: removed a stale lock of pid {info.get('pid')} on {info.get('host')} "
                          f"(since {info.get('since')}); that process no longer runs", StaleLockWarning,
                          stacklevel=4)
        finally:
            moved.unlink()

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~_umask())
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self.info, f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def acquire(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.info = {"pid": os.getpid(), "host": socket.gethostname(), "proc_start": _proc_start(os.getpid()),
                     "since": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                     "token": uuid.uuid4().hex}
        info: dict | None = None
        for _ in range(3):
            if self._create():
                return self
            info, raw = self._holder()
            if info is None:
                continue  # released between our attempt and the read: try again
            if info and self._is_stale(info):
                self._take_over(raw, info)
                continue
            break
        who = (f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}" if info
               else "another process (its lock file is unreadable)")
        raise FolderLocked(f"{self.folder} is in use by {who}; wait for that run to finish, or if it is no longer "
                           f"running, delete {self.path}")

    def release(self) -> None:
        if self.info is None:
            return
        try:
            if json.loads(self.path.read_bytes()).get("token") == self.info["token"]:
                self.path.unlink()
        except (FileNotFoundError, ValueError):
            pass
        finally:
            self.info = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False
