"""Inputs refused up front through the real ``interp`` entry point (issue 15): exit 2, one line naming the bad
value, no traceback, no folder left behind."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from interp.registry import PACKAGED

INTERP = shutil.which("interp", path=str(Path(sys.executable).parent)) or shutil.which("interp")


def _one_line(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr and lines[0].startswith("Error: "), proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.mark.parametrize("name, magic", [("mine.gguf", True), (PACKAGED["smollm2-135m-instruct"].gguf_name, True),
                                          ("plain.gguf", False)])
def test_corrupt_gguf_named_with_size_and_pinned_hash(tmp_path, name, magic):
    path = tmp_path / name
    path.write_bytes((b"GGUF\x03\x00\x00\x00" if magic else b"") + b"garbage!" * 100)
    out = tmp_path / "out"
    proc = subprocess.run([INTERP, "report", "--model", str(path), "-a", "attention_basics", "--out", str(out),
                           "-q"], capture_output=True, text=True, timeout=300)
    size = path.stat().st_size
    _one_line(proc, f"GGUF file {path} ({size} bytes) is", "corrupt or truncated" if magic else "no GGUF magic")
    if name.startswith("SmolLM2"):
        assert f"expected sha256 {PACKAGED['smollm2-135m-instruct'].sha256}" in proc.stderr
    assert not out.exists()


def test_manifest_records_portable_paths_with_sha256(tmp_path):
    import hashlib
    import json

    texts = tmp_path / "data" / "texts.txt"
    texts.parent.mkdir()
    texts.write_text("One text about the sea and the ships on it.\n\nAnother text about mountains and snow.\n")
    out = tmp_path / "reports" / "run"
    proc = subprocess.run([INTERP, "report", "--model", "tiny-llama", "-a", "attention_basics", "--out", str(out),
                           "-q", "-p", f"attention_basics.texts_file={json.dumps(str(texts))}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    man = json.loads((out / "manifest.json").read_text())
    [entry] = man["data_files"]
    assert entry["path"] == "../../data/texts.txt" and (out / entry["path"]).resolve() == texts.resolve()
    assert entry["sha256"] == hashlib.sha256(texts.read_bytes()).hexdigest()
    assert man["argv"][0] == "interp"
