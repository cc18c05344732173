"""Report folders (issue 15): one writer at a time, a stale lock recovered, the folder as the union of the
analyses run into it, ``--force`` limited to interp's own files.

The concurrency tests run two real processes: a writer that holds the folder (the real CLI in a child process
with one extra analysis that waits on a file, so the overlap is certain, not timed) and the installed ``interp``
entry point as the second writer.
"""

from __future__ import annotations  # noqa: I001

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from interp.analyses import registry
from interp.cli import app

runner = CliRunner()
INTERP = shutil.which("interp", path=str(Path(sys.executable).parent)) or shutil.which("interp")

HOLDER = r'''
import sys, time
from pathlib import Path
import numpy as np
from interp.analyses import registry
from interp.cli import app
from interp.scores import ScoreTable

gate = Path(sys.argv[1])

def run(model, params, out_dir):
    (gate / "started").write_text("1")
    t0 = time.time()
    while not (gate / "release").exists() and time.time() - t0 < 120:
        time.sleep(0.05)
    s = model.shape
    return {"scores": ScoreTable.from_matrix(np.ones((s.n_layers, s.n_heads)), model=model.name,
                                             analysis="gate", score="one", n_samples=1)}

registry.REGISTRY["gate"] = registry.AnalysisSpec("gate", "waits for a file", run=run)
app(sys.argv[2:], standalone_mode=True)
'''


def _tree_hash(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


def _holder(tmp_path: Path, out: Path) -> tuple[subprocess.Popen, Path]:
    gate = tmp_path / "gate"
    gate.mkdir()
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    proc = subprocess.Popen([sys.executable, str(script), str(gate), "report", "--model", "tiny-llama", "-a",
                             "attention_basics,gate", "--out", str(out), "--n-tokens", "16", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (gate / "started").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < 240, "the holder never reached its gate"
        time.sleep(0.1)
    return proc, gate


def _interp(out: Path, model: str, *extra) -> subprocess.CompletedProcess:
    assert INTERP, "the interp console script is not installed in this environment"
    return subprocess.run([INTERP, "report", "--model", model, "-a", "attention_basics", "--out", str(out),
                           "--n-tokens", "16", "-q", *extra], capture_output=True, text=True, timeout=300)


def test_second_writer_refused_while_first_completes(tmp_path):
    out = tmp_path / "shared"
    holder, gate = _holder(tmp_path, out)
    try:
        before = _tree_hash(out)
        second = _interp(out, "tiny-qwen2")
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
        assert f"pid {holder.pid} on {os.uname().nodename}" in lines[0] and "in use" in lines[0], lines[0]
        assert _tree_hash(out) == before, "the refused writer changed the folder"
    finally:
        (gate / "release").write_text("1")
        _, err = holder.communicate(timeout=240)
    assert holder.returncode == 0, err
    man = json.loads((out / "manifest.json").read_text())
    assert man["model"] == "tiny-llama" and man["analyses"] == ["attention_basics", "gate"]
    assert set(pd.read_parquet(out / "scores.parquet")["analysis"]) == {"attention_basics", "gate"}
    assert json.loads((out / "run.json").read_text())["model"] == "tiny-llama"
    assert not (out / ".interp.lock").exists()


def test_stale_lock_of_a_killed_run_is_recovered(tmp_path):
    out = tmp_path / "killed"
    holder, _ = _holder(tmp_path, out)
    holder.send_signal(signal.SIGKILL)  # no cleanup: the lock file stays
    holder.communicate(timeout=60)
    lock = json.loads((out / ".interp.lock").read_text())
    assert lock["pid"] == holder.pid
    res = _interp(out, "tiny-llama")
    assert res.returncode == 0, res.stderr
    assert f"removed a stale lock of pid {holder.pid}" in res.stderr and "no longer runs" in res.stderr
    assert "resumed: attention_basics" in res.stdout  # the killed run's finished part is reused
    assert (out / "report.html").is_file() and not (out / ".interp.lock").exists()


def _table_spec(state):
    """A registered test analysis with an extra table (present while ``state['extra']``)."""
    from interp.scores import ScoreTable

    def run(model, params, out_dir):
        s = model.shape
        res = {"scores": ScoreTable.from_matrix(np.full((s.n_layers, s.n_heads), state["value"]),
                                                model=model.name, analysis="tabled", score="v", n_samples=1)}
        if state["extra"]:
            res["extra"] = pd.DataFrame({"x": [1, 2, 3]})
        return res

    return registry.AnalysisSpec("tabled", "test analysis with a table", run=run)


def _report(out, analyses, *extra):
    return runner.invoke(app, ["report", "--model", "tiny-llama", "--out", str(out), "--n-tokens", "16", "-q",
                               "-a", analyses, *extra], catch_exceptions=False)


def test_subset_run_adds_to_the_folder_and_rebuilds_top_level_files(tmp_path, monkeypatch):
    state = {"value": 1.0, "extra": True}
    monkeypatch.setitem(registry.REGISTRY, "tabled", _table_spec(state))
    out = tmp_path / "union"
    assert _report(out, "attention_basics,tabled").exit_code == 0
    full = pd.read_parquet(out / "scores.parquet")
    assert (out / "tables" / "tabled.extra.parquet").is_file()

    res = _report(out, "attention_basics", "-p", "attention_basics.n_texts=2")  # refresh one part
    assert res.exit_code == 0 and "computed: attention_basics" in res.output, res.output
    now = pd.read_parquet(out / "scores.parquet")
    assert len(now) == len(full) and set(now["analysis"]) == {"attention_basics", "tabled"}
    ab = now[now["analysis"] == "attention_basics"]
    assert (ab["n_samples"] < full[full["analysis"] == "attention_basics"]["n_samples"].iloc[0]).all()
    man = json.loads((out / "manifest.json").read_text())
    assert man["analyses"] == ["attention_basics", "tabled"] and man["params"]["attention_basics"]["n_texts"] == 2
    assert man["timings_s"]["analyses"]["tabled"]["earlier_run"] and "tables/tabled.extra.parquet" in man["files"]
    assert "tabled" in (out / "report.html").read_text()

    state.update(value=2.0, extra=False)  # the analysis no longer writes its table: the old one goes
    assert _report(out, "tabled", "--no-resume").exit_code == 0
    assert not (out / "tables" / "tabled.extra.parquet").exists()
    now = pd.read_parquet(out / "scores.parquet")
    assert (now[now["analysis"] == "tabled"]["value"] == 2.0).all() and len(now) == len(full)
    assert (out / "parts" / "attention_basics.json").is_file(), "--no-resume dropped another analysis's part"


def test_force_replaces_interp_files_only(tmp_path):
    out = tmp_path / "mixed"
    assert _report(out, "attention_basics").exit_code == 0
    (out / "notes.txt").write_text("mine")
    (out / "parts" / "my_notes.txt").write_text("mine too")
    res = runner.invoke(app, ["report", "--model", "tiny-qwen2", "--out", str(out), "--n-tokens", "16", "-q",
                              "-a", "attention_basics", "--force", "--no-resume"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert (out / "notes.txt").read_text() == "mine" and (out / "parts" / "my_notes.txt").read_text() == "mine too"
    assert json.loads((out / "manifest.json").read_text())["model"] == "tiny-qwen2"
    assert set(pd.read_parquet(out / "scores.parquet")["model"]) == {"tiny-qwen2"}


@pytest.mark.parametrize("flags", [["--force", "--no-resume"], ["--force"], []])
def test_folder_that_is_not_a_report_is_never_written(tmp_path, flags):
    out = tmp_path / "user"
    (out / "parts").mkdir(parents=True)
    (out / "parts" / "my_notes.txt").write_text("mine")
    (out / "scores.csv").write_text("a,b\n1,2\n")
    before = _tree_hash(out)
    res = runner.invoke(app, ["report", "--model", "tiny-llama", "--out", str(out), "-q", "-a",
                              "attention_basics", *flags], catch_exceptions=False)
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert f"output folder {out} is not empty and is not an interp report folder" in res.output
    assert _tree_hash(out) == before and not (out / ".interp.lock").exists()
