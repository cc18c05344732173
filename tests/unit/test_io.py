"""interp.io: atomic writes survive errors and kills, the JSONL checkpoint resumes (torn lines, settings,
no unit twice), and the folder lock excludes a second real process and recovers a dead holder's lock."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest
import torch

from interp import io


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def _run(code: str, *args, wait=True):
    cmd = [sys.executable, "-c", textwrap.dedent(code), *map(str, args)]
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, timeout=60):
    t0 = time.time()
    while not path.exists():
        if time.time() - t0 > timeout:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.05)


# --- atomic writes --------------------------------------------------------------------------------------------

def test_atomic_write_keeps_the_old_file_on_error_and_leaves_no_temp(tmp_path):
    target = tmp_path / "t.json"
    io.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text('{"a": 2, "half')
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"a": 1}
    assert _files(tmp_path) == ["t.json"]


def test_atomic_write_survives_sigkill_mid_write(tmp_path):
    target = tmp_path / "big.bin"
    io.write_bytes(target, b"old" * 10)
    proc = _run("""
        import sys, time
        from interp import io
        with io.atomic_path(sys.argv[1]) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"new" * 1000)
                f.flush()
                open(sys.argv[2], "w").close()
                time.sleep(60)
        """, target, tmp_path / "started", wait=False)
    try:
        _wait_for(tmp_path / "started")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert target.read_bytes() == b"old" * 10  # the target is never half written (a hidden temp file may remain)


def test_write_helpers_round_trip_with_normal_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    df = pd.DataFrame({"layer": [0, 1], "value": [0.5, 1.5]})
    for path, write, read in [
        (tmp_path / "a" / "t.parquet", io.write_parquet, pd.read_parquet),
        (tmp_path / "t.csv", io.write_csv, pd.read_csv),
    ]:
        write(path, df)
        pd.testing.assert_frame_equal(read(path), df)
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    io.write_text(tmp_path / "t.txt", "héllo\n")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    assert io.read_json(io.write_json(tmp_path / "j.json", {"b": [1, 2], "a": None})) == {"a": None, "b": [1, 2]}
    assert (tmp_path / "j.json").read_text() == '{\n  "a": null,\n  "b": [\n    1,\n    2\n  ]\n}\n'
    t = {"x": torch.arange(6.0).view(2, 3).t()}  # non-contiguous
    from safetensors.torch import load_file

    io.save_safetensors(tmp_path / "t.safetensors", t, metadata={"k": "v"})
    assert torch.equal(load_file(str(tmp_path / "t.safetensors"))["x"], t["x"])
    with io.atomic_path(tmp_path / "run.sh", mode=0o777) as tmp:
        tmp.write_text("#!/bin/sh\n")
    assert stat.S_IMODE((tmp_path / "run.sh").stat().st_mode) == 0o777 & ~umask
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


# --- JSONL checkpoint ------------------------------------------------------------------------------------------

def test_checkpoint_header_records_and_resume(tmp_path):
    path = tmp_path / "ck.jsonl"
    meta = {"model": "m", "lengths": (100, 200), "chat": None}
    ck = io.JsonlCheckpoint(path, meta)
    assert len(ck) == 0 and ck.done() == set() and not path.exists()  # a run that fails early leaves nothing
    ck.add({"key": "a", "v": 1.5})
    assert path.read_text().splitlines()[0] == '{"meta": {"model": "m", "lengths": [100, 200], "chat": null}}'
    ck.add({"key": "b", "v": float("nan")})
    again = io.JsonlCheckpoint(path, dict(meta))  # tuples compare like the lists they become in JSON
    assert again.keys() == ["a", "b"] and "a" in again and again.get("a") == {"key": "a", "v": 1.5}
    assert again.get("zz") is None and len(again.records()) == 2
    with pytest.raises(ValueError, match="already holds unit 'a'"):
        again.add({"key": "a", "v": 2})
    with pytest.raises(ValueError, match="needs its unit key 'key'"):
        again.add({"v": 2})


def test_torn_last_line_is_ignored_and_cut_before_the_next_append(tmp_path):
    path = tmp_path / "ck.jsonl"
    ck = io.JsonlCheckpoint(path, {"n": 1})
    ck.add({"key": 1, "x": "first"})
    with open(path, "a") as f:
        f.write('{"key": 2, "x": "sec')  # a kill in the middle of a write
    ck = io.JsonlCheckpoint(path, {"n": 1})
    assert ck.keys() == [1]
    ck.add({"key": 2, "x": "second"})
    lines = path.read_text().splitlines()
    assert [json.loads(x) for x in lines[1:]] == [{"key": 1, "x": "first"}, {"key": 2, "x": "second"}]
    path.write_text('{"meta": {"n"')  # even a torn header: start over
    ck = io.JsonlCheckpoint(path, {"n": 1})
    assert len(ck) == 0
    ck.add({"key": 1})
    assert path.read_text() == '{"meta": {"n": 1}}\n{"key": 1}\n'


def test_other_settings_are_refused_with_the_differing_keys(tmp_path):
    path = tmp_path / "ck.jsonl"
    io.JsonlCheckpoint(path, {"model": "m", "steps": 3, "lr": 0.1}).add({"key": "u"})
    with pytest.raises(io.CheckpointMismatch) as e:
        io.JsonlCheckpoint(path, {"model": "m", "steps": 4, "seed": 0}, hint="pass --fresh to start over")
    msg = str(e.value)
    assert "\n" not in msg and "different settings" in msg and "pass --fresh to start over" in msg
    assert "steps: 3 there, 4 now" in msg and "lr: 0.1 there, '<absent>' now" in msg and "seed:" in msg
    assert "model" not in msg.split("(", 1)[1]
    fresh = io.JsonlCheckpoint(path, {"model": "m", "steps": 4}, fresh=True)
    assert len(fresh) == 0
    fresh.add({"key": "v"})
    assert path.read_text() == '{"meta": {"model": "m", "steps": 4}}\n{"key": "v"}\n'
    (tmp_path / "bad.jsonl").write_text('{"meta": {}}\n{"key": 1}\nnot json\n{"key": 2}\n')
    with pytest.raises(ValueError, match="line 3 is not valid JSON"):
        io.JsonlCheckpoint(tmp_path / "bad.jsonl", {})


def test_a_unit_written_twice_counts_once_and_the_later_wins(tmp_path):
    path = tmp_path / "ck.jsonl"
    ck = io.JsonlCheckpoint(path, {})
    ck.add({"key": "a", "v": 1})
    ck.add({"key": "b", "v": 2})
    ck.add({"key": "a", "v": 3}, replace=True)
    for c in (ck, io.JsonlCheckpoint(path, {})):
        assert c.records() == [{"key": "a", "v": 3}, {"key": "b", "v": 2}] and len(c) == 2


def test_headerless_files_and_computed_keys(tmp_path):
    path = tmp_path / "legacy.jsonl"  # records carrying their own settings, no header (benchmarks/safety_causal)
    path.write_text('{"kind": "ships", "name": "0", "settings": "s1", "kl": 1}\n'
                    '{"kind": "ships", "name": "1", "settings": "s1", "kl": 2}\n')
    key = lambda r: (r["kind"], r["name"], r["settings"])
    ck = io.JsonlCheckpoint(path, None, key=key)
    assert ck.keys() == [("ships", "0", "s1"), ("ships", "1", "s1")]
    ck.add({"kind": "sahara", "name": "sahara", "settings": "s2"})
    assert len(io.JsonlCheckpoint(path, None, key=key)) == 3
    with pytest.raises(io.CheckpointMismatch, match="no settings header"):
        io.JsonlCheckpoint(path, {"model": "m"}, key=key)
    with pytest.raises(ValueError, match="record 1 has no unit key 'step'"):
        io.JsonlCheckpoint(path, None, key="step")


def test_checkpoint_after_sigkill_of_a_writer_holds_only_complete_records(tmp_path):
    path = tmp_path / "ck.jsonl"
    proc = _run("""
        import sys
        from interp import io
        ck = io.JsonlCheckpoint(sys.argv[1], {"run": 1})
        i = 0
        while True:
            ck.add({"key": i, "payload": "x" * 5000})
            i += 1
        """, path, wait=False)
    try:
        t0 = time.time()
        while (not path.exists() or path.stat().st_size < 200_000) and time.time() - t0 < 60:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    ck = io.JsonlCheckpoint(path, {"run": 1})
    n = len(ck)
    assert n >= 30 and ck.keys() == list(range(n))
    assert all(r["payload"] == "x" * 5000 for r in ck.records())
    ck.add({"key": n, "payload": "y"})
    assert io.JsonlCheckpoint(path, {"run": 1}).keys() == list(range(n + 1))


# --- folder lock -------------------------------------------------------------------------------------------------

HOLD = """
import sys, time
from interp import io
with io.FolderLock(sys.argv[1]):
    open(sys.argv[2], "w").close()
    time.sleep(float(sys.argv[3]))
"""


def test_lock_is_exclusive_and_removed_on_exit(tmp_path):
    with io.FolderLock(tmp_path) as lock:
        info = json.loads((tmp_path / ".interp.lock").read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname() and lock.info == info
        with pytest.raises(io.FolderLocked) as e:
            io.FolderLock(tmp_path).acquire()
        assert f"pid {os.getpid()} on {socket.gethostname()} since {info['since']}" in str(e.value)
        assert "\n" not in str(e.value)
    assert not (tmp_path / ".interp.lock").exists()
    with pytest.raises(RuntimeError):
        with io.FolderLock(tmp_path):
            raise RuntimeError("the body failed")
    assert not (tmp_path / ".interp.lock").exists()


def test_lock_against_a_second_real_process(tmp_path):
    folder = tmp_path / "run"
    proc = _run(HOLD, folder, tmp_path / "held", 60, wait=False)
    try:
        _wait_for(tmp_path / "held")
        with pytest.raises(io.FolderLocked, match=f"in use by pid {proc.pid} on {socket.gethostname()} since"):
            io.FolderLock(folder).acquire()
        other = _run("""
            import sys
            from interp import io
            try:
                io.FolderLock(sys.argv[1]).acquire()
            except io.FolderLocked as e:
                print("LOCKED", e)
            """, folder)
        assert other.stdout.startswith(f"LOCKED {folder} is in use by pid {proc.pid}"), other.stderr
    finally:
        proc.kill()
        proc.wait(timeout=30)
    # killed while holding: the lock file stays, its process is gone → taken over with a warning
    assert json.loads((folder / ".interp.lock").read_text())["pid"] == proc.pid
    with pytest.warns(io.StaleLockWarning, match=f"stale lock of pid {proc.pid}"):
        with io.FolderLock(folder):
            assert json.loads((folder / ".interp.lock").read_text())["pid"] == os.getpid()
    assert _files(folder) == []


def test_a_finished_holder_frees_the_folder(tmp_path):
    done = _run(HOLD, tmp_path, tmp_path / "held", 0)
    assert done.returncode == 0, done.stderr
    with io.FolderLock(tmp_path):
        pass


def test_other_hosts_reused_pids_and_unreadable_locks(tmp_path):
    lock = tmp_path / ".interp.lock"
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "2024-01-01T00:00:00"}))
    with pytest.raises(io.FolderLocked, match="pid 1 on elsewhere since 2024-01-01T00:00:00"):
        io.FolderLock(tmp_path).acquire()  # cannot check a process on another host: never taken over
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "x",
                                "proc_start": "0"}))  # our pid, but a different process start: pid reused
    with pytest.warns(io.StaleLockWarning):
        with io.FolderLock(tmp_path):
            pass
    lock.write_text("")
    with pytest.raises(io.FolderLocked, match="unreadable"):
        io.FolderLock(tmp_path).acquire()


def test_hub_kernels_package_is_not_shadowed_by_the_repo_folder(tmp_path):
    """From the repository root (on sys.path), a model load still finds transformers' hub package ``kernels``."""
    import subprocess
    import sys
    from pathlib import Path

    import pytest

    root = Path(__file__).resolve().parents[2]
    probe = subprocess.run([sys.executable, "-c", "import importlib.util as u, sys; sys.path.remove('') if '' in "
                            "sys.path else None; print(u.find_spec('kernels') is not None)"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=60)
    if probe.stdout.strip() != "True":
        pytest.skip("the hub package 'kernels' is not installed here: nothing can shadow it")
    code = ("import sys, interp; m = interp.load_model('tiny-llama'); import kernels; "
            "print(kernels.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-1500:]
    assert Path(out.stdout.strip()).resolve().parent != (root / "kernels").resolve()
