"""Bad config values and parameters through ``interp report``: one line, exit 2, no traceback, nothing written,
and — for everything that does not need the model — no model loaded (``load_model`` is replaced by a trap).

A representative set runs the real ``interp`` entry point in a subprocess; the rest runs in-process through
typer's ``CliRunner``. A hypothesis fuzz of the config loader checks that any TOML of known/unknown keys and
values of any type ends in a run or one ``ReportError`` line, never another exception.
"""

from __future__ import annotations  # noqa: I001

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from interp.cli import app

runner = CliRunner()
INTERP = shutil.which("interp", path=str(Path(sys.executable).parent)) or shutil.which("interp")


def _tree_hash(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


def _assert_one_line(code: int, output: str, *needles):
    assert code == 2, output
    assert "Traceback" not in output and output.startswith("Error: "), output
    assert len(output.strip().splitlines()) == 1, output
    for n in needles:
        assert n in output, (n, output)


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading any model fails the test: these inputs must be refused before."""
    import interp.model

    def trap(*a, **kw):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr(interp.model, "load_model", trap)


# (TOML text, needles of the error line) — each refused before the model loads
CONFIG_CASES = [
    ('seed = "abc"', ["seed = 'abc'", "an int >= 0"]),
    ('n_tokens = "abc"', ["n_tokens = 'abc'", "an int >= 1"]),
    ("n_tokens = -5", ["n_tokens = -5"]),
    ("model = 123", ["model = 123", "a string"]),
    ("analyses = 5", ["analyses = 5", "analysis names"]),
    ("params = 3", ["params = 3", "a table"]),
    ("top_k = -3", ["top_k = -3", "an int >= 1"]),
    ("resume = 1", ["resume = 1", "true or false"]),
    ('analyses = ["sinks"]\n[params.sinks]\nn_samples = "ten"', ["params.sinks.n_samples = 'ten'", "an int"]),
    ('analyses = ["sinks"]\n[params.sinks]\nn_samples = -3', ["params.sinks.n_samples = -3", ">= 1"]),
    ('analyses = ["sinks"]\n[params.sinks]\nn_sampels = 3', ["'n_sampels'", "valid keys: n_samples, n_tokens"]),
    ('analyses = ["sinks"]\n[params.sinks.streaming]\nn_tokens = 32',
     ["params.sinks.streaming.n_tokens = 32", "sink + window = 68"]),
    ('analyses = ["sinks"]\n[params]\nsinks = 3', ["params.sinks = 3", "expected a table"]),
    ('analyses = ["retrieval"]\n[params.retrieval]\nlengths = []', ["params.retrieval.lengths = []"]),
    ('analyses = ["taxonomy"]\n[params.taxonomy.ablation]\nk = "5"', ["params.taxonomy.ablation.k = '5'"]),
    ('analyses = ["attention_basics"]\n[params.attention_basics]\ntexts_file = "/nonexistent/t.txt"',
     ["texts_file = '/nonexistent/t.txt'", "no such file"]),
    ('analyses = ["model_divergence"]', ["params.model_divergence.model_b = ''"]),
    ('analyses = ["sinks"]\n[params.attention_basics]\nn_texts = 2', ["analyses not in this run"]),
]


@pytest.mark.parametrize("toml, needles", CONFIG_CASES, ids=[c[0].splitlines()[-1] for c in CONFIG_CASES])
def test_bad_config_refused_before_loading(tmp_path, no_model_load, toml, needles):
    cfg = tmp_path / "run.toml"
    cfg.write_text(toml + "\n")
    out = tmp_path / "out"
    res = runner.invoke(app, ["report", "--config", str(cfg), "--out", str(out), "-q"], catch_exceptions=False)
    _assert_one_line(res.exit_code, res.output, *needles)
    assert not out.exists(), "a refused run must not leave a folder behind"


@pytest.mark.parametrize("args, needles", [
    (["--top-k", "-3"], ["top_k = -3"]),
    (["--n-tokens", "-1"], ["n_tokens = -1"]),
    (["-a", "sinks", "-p", "sinks.streaming.n_tokens=abc"], ["params.sinks.streaming.n_tokens = 'abc'"]),
    (["-a", "sinks", "-p", "sinks.conditions=[]"], ["params.sinks.conditions = []"]),
    (["-a", "sinks", "-p", "sinks.eps=2"], ["params.sinks.eps = 2.0", "< 1"]),
    (["-a", "sinks", "-p", "nodot=3"], ["--param 'nodot=3'", "ANALYSIS.KEY=VALUE"]),
    (["-a", "sinks", "-p", "sinks.frobnicate=1"], ["'frobnicate'", "valid keys"]),
])
def test_bad_flags_refused_before_loading(tmp_path, no_model_load, args, needles):
    out = tmp_path / "out"
    res = runner.invoke(app, ["report", "--model", "tiny-llama", "--out", str(out), "-q", *args],
                        catch_exceptions=False)
    _assert_one_line(res.exit_code, res.output, *needles)
    assert not out.exists()


def test_param_flags_reach_the_analysis(tmp_path):
    import json

    cfg = tmp_path / "run.toml"
    cfg.write_text('[params.sinks]\nn_samples = 3\nstreaming = false\n[params.sinks.hidden]\nn_tokens = 40\n')
    out = tmp_path / "out"
    res = runner.invoke(app, ["report", "--model", "tiny-llama", "-a", "sinks", "--config", str(cfg), "--out",
                              str(out), "-q", "-p", "sinks.n_samples=2", "-p", "sinks.hidden.min_rows=8",
                              "-p", "sinks.secondary.enabled=false", "-p", "sinks.extreme=false",
                              "-p", "sinks.conditions=['prose']"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    p = json.loads((out / "manifest.json").read_text())["params"]["sinks"]
    assert p["n_samples"] == 2 and p["streaming"]["enabled"] is False and p["conditions"] == ["prose"]
    assert p["hidden"] == {"enabled": True, "n_samples": 8, "n_tokens": 40, "threshold": 0.1, "min_rows": 8}
    import pandas as pd

    s = pd.read_parquet(out / "scores.parquet")
    assert not s["score"].str.startswith(("stream_", "secondary_", "resid_peak")).any()
    assert (s.loc[s["score"] == "sink_rate_prose", "n_samples"] == 2).all()
    assert set(s.loc[s["score"].str.startswith("hidden_sinks_"), "level"]) == {"layer"}


def test_checks_that_need_the_model_run_before_any_analysis(tmp_path, monkeypatch):
    from interp.analyses import basic

    monkeypatch.setattr(basic, "run", lambda *a: pytest.fail("an analysis ran before the context check"))
    out = tmp_path / "out"
    res = runner.invoke(app, ["report", "--model", "tiny-llama", "-a", "attention_basics,retrieval", "--out",
                              str(out), "-q", "-p", "retrieval.lengths=[300]"], catch_exceptions=False)
    _assert_one_line(res.exit_code, res.output, "params.retrieval.lengths = [300]", "context of 256 tokens",
                     "choose lengths <= 206")
    assert not out.exists()
    res = runner.invoke(app, ["report", "--model", "tiny-llama", "-a", "vhd", "--out", str(out), "-q"],
                        catch_exceptions=False)
    _assert_one_line(res.exit_code, res.output, "needs a vision-language model", "tiny-llama is text-only")


def test_input_failure_inside_an_analysis_does_not_say_rerun(tmp_path, monkeypatch):
    from interp.analyses import registry

    def run(model, params, out_dir):
        raise ValueError("inputs of 12 tokens are too short for this method")

    monkeypatch.setitem(registry.REGISTRY, "picky", registry.AnalysisSpec("picky", "test", run=run))
    res = runner.invoke(app, ["report", "--model", "tiny-llama", "-a", "picky", "--out", str(tmp_path / "o"),
                              "-q"], catch_exceptions=False)
    _assert_one_line(res.exit_code, res.output, "too short", "Rerunning will fail the same way")
    assert "resume" not in res.output

    def buggy(model, params, out_dir):
        return {"scores": [][1]}

    monkeypatch.setitem(registry.REGISTRY, "buggy", registry.AnalysisSpec("buggy", "test", run=buggy))
    res = runner.invoke(app, ["report", "--model", "tiny-llama", "-a", "buggy", "--out", str(tmp_path / "b"),
                              "-q"])
    assert res.exit_code == 1 and "IndexError" in res.output and "fail the same way" in res.output
    assert "rerun the same command to resume" not in res.output


def test_help_names_the_opt_in_analyses():
    proc = subprocess.run([INTERP or "interp", "report", "--help"], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "COLUMNS": "200"})
    assert proc.returncode == 0
    text = " ".join(proc.stdout.replace("│", " ").split())  # rich wraps the help in a box
    from interp.analyses.registry import REGISTRY

    opt_in = [n for n, s in REGISTRY.items() if not s.in_default]
    assert "except the opt-in ones (" + ", ".join(opt_in) + ")" in text, text
    assert "--param" in text


SUBPROCESS_CASES = [  # (TOML, extra args, needles); each run takes ~5-20 s (python + torch start-up)
    ('seed = "abc"\n', [], ["seed = 'abc'"]),
    ('model = "tiny-llama"\n', ["-a", "vhd"], ["needs a vision-language model"]),
    pytest.param("model = 123\n", [], ["model = 123"], marks=pytest.mark.slow),
    pytest.param("params = 3\n", [], ["params = 3"], marks=pytest.mark.slow),
    pytest.param('[params.sinks]\nn_samples = "ten"\n', ["-a", "sinks"], ["params.sinks.n_samples = 'ten'"],
                 marks=pytest.mark.slow),
    pytest.param("top_k = -3\n", [], ["top_k = -3"], marks=pytest.mark.slow),
    pytest.param('model = "tiny-llama"\n[params.retrieval]\nlengths = [500]\n', ["-a", "retrieval"],
                 ["params.retrieval.lengths = [500]", "context of 256"], marks=pytest.mark.slow),
]


AFTER_LOAD = ("needs a vision-language model", "context of 256")  # checks that need the loaded model


@pytest.mark.parametrize("toml, args, needles", SUBPROCESS_CASES)
@pytest.mark.parametrize("existing", [False, True], ids=["new-out", "user-folder"])
def test_real_entry_point_subprocess(tmp_path, toml, args, needles, existing):
    """The installed ``interp`` script, as a user runs it: exit 2, one line, no traceback, folder untouched
    (a user's folder keeps its files even with --force; a new --out is not created). Every case runs on a
    user's folder too: config checks come before the folder check, so they name the same value; the model's
    own checks (vhd, a length over the context) come after it, and a folder that is not a report is refused
    first, whatever the flags."""
    if existing and any(n in AFTER_LOAD for n in needles):
        needles = ["is not an interp report folder", "--force replaces interp's own files only"]
    assert INTERP, "the interp console script is not installed in this environment"
    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml)
    before = _tree_hash(out)
    proc = subprocess.run([INTERP, "report", "--config", str(cfg), "--out", str(out), "-q", "--force", *args],
                          capture_output=True, text=True, timeout=300)
    _assert_one_line(proc.returncode, proc.stderr, *needles)
    assert _tree_hash(out) == before and out.exists() == existing


def test_config_loader_fuzz(tmp_path_factory, monkeypatch):
    """Any TOML over known and unknown keys with values of any type: a run (here stopped at the model load) or
    one ReportError line, never another exception. Derandomized, no example database: every run draws the same
    examples, so a loaded full run cannot meet a case a quiet one never saw (it failed once that way; 1500 random
    examples found no bug). ``INTERP_FUZZ_EXAMPLES=N`` raises the count when hunting."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    import interp.model
    from interp.report.runner import ReportError, load_config, run_report

    class Loaded(Exception):
        pass

    def stop(*a, **kw):
        raise Loaded

    monkeypatch.setattr(interp.model, "load_model", stop)
    scalars = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, width=32), st.booleans(),
                        st.text(alphabet="abcxyz0129 ,._/-", max_size=12))
    values = st.one_of(scalars, st.lists(scalars, max_size=3))
    keys = st.sampled_from(["model", "analyses", "out", "seed", "n_tokens", "resume", "top_k", "bogus"])
    p_keys = st.sampled_from(["n_samples", "n_tokens", "eps", "conditions", "streaming", "k", "lengths", "zzz"])
    analyses = st.sampled_from(["sinks", "attention_basics", "retrieval", "taxonomy", "nope"])
    root = tmp_path_factory.mktemp("fuzz")

    def toml_value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v + '"'
        if isinstance(v, list):
            return "[" + ", ".join(map(toml_value, v)) + "]"
        return repr(v) if not isinstance(v, float) or v == v else "nan"

    @settings(max_examples=int(os.environ.get("INTERP_FUZZ_EXAMPLES", 60)), deadline=None, derandomize=True,
              database=None, suppress_health_check=list(HealthCheck))
    @given(top=st.dictionaries(keys, values, max_size=4),
           params=st.dictionaries(analyses, st.dictionaries(p_keys, values, max_size=3), max_size=2))
    def check(top, params):
        lines = [f"{k} = {toml_value(v)}" for k, v in top.items()]
        for a, table in params.items():
            lines.append(f"[params.{a}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
        cfg = root / "c.toml"
        cfg.write_text("\n".join(lines) + "\n")
        try:
            c = load_config(cfg)
            run_report(c.get("model", "tiny-llama"), c.get("analyses"), root / "out", params=c.get("params"),
                       n_tokens=c.get("n_tokens"), seed=c.get("seed", 0), top_k=c.get("top_k", 10),
                       resume=c.get("resume", True), progress=False)
        except ReportError as e:
            assert "\n" not in str(e) and str(e), repr(e)
        except Loaded:
            pass
        assert not (root / "out").exists()

    check()


def test_report_parts_written_before_levels_resume(tmp_path):
    """A folder from before the ``level`` column: its parts load (level derived) instead of failing."""
    import pandas as pd

    out = tmp_path / "old"
    args = ["report", "--model", "tiny-llama", "-a", "attention_basics", "--out", str(out), "-q", "--n-tokens", "16"]
    assert runner.invoke(app, args, catch_exceptions=False).exit_code == 0
    part = out / "parts" / "attention_basics.scores.parquet"
    pd.read_parquet(part).drop(columns="level").to_parquet(part)
    res = runner.invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 0 and "resumed: attention_basics" in res.output, res.output
    assert set(pd.read_parquet(out / "scores.parquet")["level"]) == {"head"}


def test_force_replaces_another_run_only_after_every_check(tmp_path):
    out = tmp_path / "run"
    base = ["report", "--out", str(out), "-q", "--n-tokens", "16", "-a"]
    assert runner.invoke(app, base + ["attention_basics", "--model", "tiny-llama"]).exit_code == 0
    before = _tree_hash(out)
    res = runner.invoke(app, base + ["retrieval", "--model", "tiny-qwen2", "--force", "-p", "retrieval.lengths=[300]"],
                        catch_exceptions=False)
    _assert_one_line(res.exit_code, res.output, "params.retrieval.lengths = [300]")
    assert _tree_hash(out) == before, "--force deleted the old run although the new one was refused"


def test_analyses_lists_every_parameter():
    res = runner.invoke(app, ["analyses", "--params"], catch_exceptions=False)
    assert res.exit_code == 0
    for line in ("sinks.streaming.n_tokens (an int, default 256): tokens per window (> sink + window) [>= 2]",
                 "taxonomy.ablation.k (an int, default 5)", "retrieval.lengths (a list of ints, default [500, 1000])",
                 "model_divergence.model_b (a string, default '')", "duo_attention.steps (an int, default 30)",
                 "vhd.image (a string or none, default None)"):
        assert line in res.output, line
