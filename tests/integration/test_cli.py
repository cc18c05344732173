"""End-to-end tests of ``interp report`` on the random tiny llama (seconds, no real model).

Numbers are checked against an independent float64 recomputation from HF's own eager attention weights
(``output_attentions=True``), not against values read off the implementation.
"""

from __future__ import annotations  # noqa: I001  (ruff's first-party detection of interp.analyses varies)

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from interp.analyses import basic, registry
from interp.cli import app
from interp.scores import COLUMNS

N_TOKENS = 40
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def report(out, *extra):
    return invoke("report", "--model", "tiny-llama", "--out", out, "--n-tokens", N_TOKENS, "-q", *extra)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    res = report(out, "--analyses", "attention_basics")
    assert res.exit_code == 0, res.output
    return out


def reference_basics(texts, n_tokens):
    """First-token mass and entropy per head from HF eager attention weights, in float64."""
    from interp.testing import tiny_model

    m = tiny_model("llama")  # what load_model("tiny-llama") builds (seed 0)
    m.hf.set_attn_implementation("eager")
    mass, ent, n = 0.0, 0.0, 0
    for text in texts:
        ids = torch.tensor([m.tokenizer.encode(text)[:n_tokens]])
        with torch.no_grad():
            att = m.hf(input_ids=ids, output_attentions=True).attentions  # layer × [1, head, q, k]
        a = torch.stack([x[0] for x in att]).double()[:, :, 1:, :]  # [layer, head, query_pos-1, key_pos]
        mass = mass + a[..., 0].sum(-1)
        ent = ent + torch.special.entr(a).sum(-1).sum(-1)
        n += a.shape[2]
    return (mass / n).numpy(), (ent / n).numpy(), n


def test_help_and_listings():
    res = invoke("--help")
    assert res.exit_code == 0 and all(c in res.output for c in ("report", "analyses", "models"))
    res = invoke("analyses")
    assert res.exit_code == 0 and "attention_basics" in res.output
    res = invoke("models")
    assert res.exit_code == 0
    assert all(m in res.output for m in ("smollm2-135m-instruct", "default", "tiny-llama", "gemma-3-270m"))
    res = invoke("report", "--help")
    flags = ("--analyses", "--out", "--config", "--n-tokens", "--seed", "--resume")
    assert all(f in res.output for f in flags)


def test_report_files_and_values(tiny_run):
    out = tiny_run
    for f in ["scores.parquet", "scores.csv", "per_token.parquet", "report.html", "manifest.json"]:
        assert (out / f).is_file(), f
    scores = pd.read_parquet(out / "scores.parquet")
    assert list(scores.columns[: len(COLUMNS)]) == COLUMNS
    assert set(scores["score"]) == {"first_token_mass", "entropy"}
    pd.testing.assert_frame_equal(pd.read_csv(out / "scores.csv"), scores, check_dtype=False)

    mass, ent, n = reference_basics(basic.TEXTS[:4], N_TOKENS)
    for name, ref in [("first_token_mass", mass), ("entropy", ent)]:
        sub = scores[scores["score"] == name]
        got = np.full(ref.shape, np.nan)
        got[sub["layer"], sub["head"]] = sub["value"]
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
        assert (sub["n_samples"] == n).all()
    per_token = pd.read_parquet(out / "per_token.parquet")
    assert len(per_token) == n * mass.size
    # per-token values average back to the score
    pt = per_token.groupby(["layer", "head"])["value"].mean()
    np.testing.assert_allclose(pt.unstack().to_numpy(), mass, rtol=1e-5, atol=1e-6)

    man = json.loads((out / "manifest.json").read_text())
    assert man["model"] == "tiny-llama" and man["weights_hash"] == "random-seed0"
    assert all(man["packages"][p] for p in ("torch", "transformers", "transformer_lens", "nnsight", "interp"))
    assert man["params"]["attention_basics"]["n_tokens"] == N_TOKENS and man["seed"] == 0
    assert man["data_files"][0]["sha256"] and "attention_basics" in man["timings_s"]["analyses"]
    assert "report" in man["command"]
    page = (out / "report.html").read_text()
    assert "<script src=\"http" not in page and "id='atlas-data'" in page  # the head atlas, self-contained
    assert (out / "roles.parquet").is_file()
    assert not list(out.rglob("*.tmp"))


def _flaky_spec(state):
    def run(model, params, out_dir):
        if state["fail"]:
            raise RuntimeError("simulated crash")
        from interp.scores import ScoreTable

        s = model.shape
        vals = np.arange(s.n_layers * s.n_heads, dtype=float).reshape(s.n_layers, s.n_heads)
        return {"scores": ScoreTable.from_matrix(vals, model=model.name, analysis="flaky", score="index",
                                                 n_samples=1)}

    return registry.AnalysisSpec("flaky", "test analysis", run=run)  # no parameters


def test_resume_after_crash_matches_uninterrupted(tmp_path, monkeypatch):
    calls = []
    real_run = basic.run
    monkeypatch.setattr(basic, "run", lambda *a: calls.append(1) or real_run(*a))
    state = {"fail": True}
    monkeypatch.setitem(registry.REGISTRY, "flaky", _flaky_spec(state))

    out = tmp_path / "resumed"
    res = report(out, "--analyses", "attention_basics,flaky")
    assert res.exit_code == 1 and "simulated crash" in res.output and "resume" in res.output
    assert (out / "parts" / "attention_basics.json").exists() and not (out / "scores.parquet").exists()
    assert not list(out.rglob("*.tmp")) and len(calls) == 1

    state["fail"] = False
    res = report(out, "--analyses", "attention_basics,flaky")
    assert res.exit_code == 0, res.output
    assert len(calls) == 1, "the finished analysis was recomputed"
    assert "resumed: attention_basics" in res.output

    fresh = tmp_path / "fresh"
    assert report(fresh, "--analyses", "attention_basics,flaky").exit_code == 0
    assert len(calls) == 2
    pd.testing.assert_frame_equal(pd.read_parquet(out / "scores.parquet"),
                                  pd.read_parquet(fresh / "scores.parquet"))
    pd.testing.assert_frame_equal(pd.read_parquet(out / "per_token.parquet"),
                                  pd.read_parquet(fresh / "per_token.parquet"))
    for f in ["scores.csv", "report.html"]:
        assert (out / f).read_bytes() == (fresh / f).read_bytes(), f

    # changed parameters invalidate the part; --no-resume recomputes
    assert report(out, "--analyses", "attention_basics", "--seed", "1").exit_code == 0 and len(calls) == 3
    assert report(out, "--analyses", "attention_basics", "--seed", "1", "--no-resume").exit_code == 0
    assert len(calls) == 4


def test_config_file_and_flag_override(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('model = "tiny-llama"\nanalyses = ["attention_basics"]\nn_tokens = 16\nseed = 3\n'
                   '[params.attention_basics]\nn_texts = 2\n')
    out = tmp_path / "cfg"
    res = invoke("report", "--config", cfg, "--out", out, "--n-tokens", 12, "-q")
    assert res.exit_code == 0, res.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["params"]["attention_basics"] == {"n_tokens": 12, "n_texts": 2, "texts_file": None}
    assert man["seed"] == 3
    assert pd.read_parquet(out / "scores.parquet")["n_samples"].iloc[0] == 2 * 11


def _error(res, *needles):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and res.output.startswith("Error: ")
    assert len(res.output.strip().splitlines()) == 1, res.output
    for n in needles:
        assert n in res.output, res.output


def test_bad_inputs(tmp_path, tiny_run):
    _error(report(tmp_path / "x", "--analyses", "attention_basics,nope"), "'nope'", "attention_basics")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    _error(report(blocker / "sub"), "not writable")
    _error(report(blocker), "not a folder")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hi")
    _error(report(tmp_path / "other"), "not empty")
    bad_cfg = tmp_path / "bad.toml"
    bad_cfg.write_text("modle = 'x'\n")
    _error(invoke("report", "--config", bad_cfg), "unknown keys")
    bad_cfg.write_text("[params.attention_basics]\nn_tokenz = 3\n")
    _error(invoke("report", "--config", bad_cfg, "--out", tmp_path / "y"), "n_tokenz")

    # a run folder from another model / interp version is refused, nothing is touched
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    _error(invoke("report", "--model", "tiny-qwen2", "--out", run, "-q"), "tiny-llama", "--force")
    raw = (run / "run.json").read_bytes()
    (run / "run.json").write_text(json.dumps({**json.loads(raw), "interp_version": "0.0.1"}))
    _error(report(run), "interp 0.0.1")
    (run / "run.json").write_bytes(raw)
    assert before == {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    res = invoke("report", "--model", "tiny-qwen2", "--out", run, "--n-tokens", 16, "-q", "--force")
    assert res.exit_code == 0, res.output
    assert json.loads((run / "manifest.json").read_text())["model"] == "tiny-qwen2"


def test_subprocess_exit_code_and_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "interp.cli", "report", "--analyses", "nope", "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("Error: unknown analysis 'nope'") and "Traceback" not in proc.stderr


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    from interp import io

    target = tmp_path / "t.json"
    io.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text('{"a": 2, "half')
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]


def test_missing_analysis_module_is_skipped(monkeypatch, capsys):
    from interp.report.runner import ReportError, resolve_analyses

    ghost = registry.AnalysisSpec("ghost", "not written yet", run="interp.analyses.ghost_xyz:run")
    monkeypatch.setitem(registry.REGISTRY, "ghost", ghost)
    names = resolve_analyses(None)  # default = every available analysis
    assert "ghost" not in names and "attention_basics" in names
    assert "skipping analysis 'ghost'" in capsys.readouterr().err
    with pytest.raises(ReportError, match="not installed"):
        resolve_analyses(["ghost"])
    res = invoke("analyses")
    assert "ghost" in res.output and "[not installed]" in res.output
    slow = registry.AnalysisSpec("slowpoke", "opt-in", run=lambda *a: {}, in_default=False)
    monkeypatch.setitem(registry.REGISTRY, "slowpoke", slow)
    assert "slowpoke" not in resolve_analyses(None) and resolve_analyses(["slowpoke"]) == ["slowpoke"]


def test_registry_import_is_cheap():
    code = ("import sys, interp.analyses.registry as r; assert r.available(); "
            "heavy = [m for m in ('torch', 'transformers', 'pandas') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_quiet_prints_one_line_and_nothing_on_stderr(tmp_path):
    """``-q``: no progress bars (GGUF, analyses), no warnings; stdout is the one summary line."""
    proc = subprocess.run([sys.executable, "-m", "interp.cli", "report", "--model", "tiny-llama", "--out",
                           str(tmp_path / "q"), "--n-tokens", "12", "-q"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wrote "), proc.stdout
    loud = subprocess.run([sys.executable, "-m", "interp.cli", "report", "--model", "tiny-llama", "--out",
                           str(tmp_path / "l"), "--n-tokens", "12"], capture_output=True, text=True, timeout=300)
    assert loud.returncode == 0 and loud.stderr != ""  # without -q the bars show: the check above can fail
