"""``interp compare``: Spearman per score checked against scipy (same shape) and against a hand-built relative-depth
grid (different shapes); role changes on planted roles; refusals (interp version, parameters, a folder holding a
comparison) as one line; the page loads in Chromium without console errors; real tiny-model reports."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from typer.testing import CliRunner

from interp import io
from interp.cli import app
from interp.report.compare import CompareError, compare_reports, depth_profiles, spearman
from interp.report.roles import assign_roles
from interp.scores import ScoreTable


def write_report(path: Path, mats: dict, *, layer=None, scalar=None, n_kv=2, version="0.1.0", params=None) -> Path:
    """A report folder with head-level scores ``mats[name] = [layer, head]`` (analysis "taxonomy"), an optional
    layer-level score and model-level scalar, its roles and a manifest."""
    n_layers, n_heads = next(iter(mats.values())).shape
    c = dict(model=f"m{n_layers}", analysis="taxonomy", n_samples=2)
    tables = [ScoreTable.from_matrix(m, score=s, **c) for s, m in mats.items()]
    if layer is not None:
        tables.append(ScoreTable.from_layers(layer, score="resid", **c))
    if scalar is not None:
        tables.append(ScoreTable.scalar(scalar, score="rate", **c))
    scores = ScoreTable.concat(tables)
    shape = {"n_layers": n_layers, "n_heads": n_heads, "n_kv_heads": n_kv}
    io.write_parquet(path / "scores.parquet", scores)
    io.write_parquet(path / "roles.parquet", assign_roles(scores, SimpleNamespace(**shape)))
    io.write_json(path / "manifest.json", {"model": c["model"], "shape": shape, "interp_version": version,
                                          "params": params or {"taxonomy": {"n_tokens": 64}}})
    return path


def test_spearman_matches_scipy_with_ties_and_nan():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 40).astype(float), rng.normal(size=40)
    x[3], y[7] = np.nan, np.nan
    ok = np.isfinite(x) & np.isfinite(y)
    rho, n = spearman(x, y)
    assert n == 38 and rho == pytest.approx(spearmanr(x[ok], y[ok])[0])
    assert np.isnan(spearman([1, 2], [2, 1])[0]) and np.isnan(spearman([1, 1, 1], [1, 2, 3])[0])


def test_same_shape_heads_and_role_changes(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 0.25, (3, 4))
    b = a + 0.05 * rng.normal(size=a.shape)
    a[2, 1] = 0.8  # an induction head in A only
    b[0, 3] = 0.9  # ... and one in B only
    other = rng.random((3, 4))
    A = write_report(tmp_path / "a", {"induction": a, "previous_token": other}, layer=[1.0, 2.0, 3.0], scalar=0.5)
    B = write_report(tmp_path / "b", {"induction": b, "previous_token": -other}, layer=[3.0, 1.0, 2.0], scalar=0.7)
    table = compare_reports(A, B, tmp_path / "out").set_index("score")
    assert table.loc["induction", "spearman"] == pytest.approx(spearmanr(a.ravel(), b.ravel())[0])
    assert table.loc["previous_token", "spearman"] == pytest.approx(-1)
    assert table.loc["resid", "spearman"] == pytest.approx(spearmanr([1, 2, 3], [3, 1, 2])[0])
    assert (table["method"].iloc[:2] == "heads").all() and table.loc["induction", "n"] == 12
    roles = pd.read_parquet(tmp_path / "out" / "roles_diff.parquet")
    ind = roles[roles["role"] == "induction"]
    assert sorted(zip(ind["name"], ind["change"])) == [("L0H3", "gained"), ("L2H1", "lost")]
    extra = ScoreTable.from_matrix(np.full((3, 4), 0.9), model="m3", analysis="retrieval", score="retrieval_score",
                                   n_samples=1)  # an analysis only A ran: its roles are not "lost" in B
    scores = ScoreTable.concat([ScoreTable.read(A / "scores.parquet"), extra])
    io.write_parquet(A / "scores.parquet", scores)
    io.write_parquet(A / "roles.parquet", assign_roles(scores, SimpleNamespace(n_layers=3, n_heads=4, n_kv_heads=2)))
    compare_reports(A, B, tmp_path / "out2")
    again = pd.read_parquet(tmp_path / "out2" / "roles_diff.parquet")
    assert "retrieval" not in set(again["role"]) and len(again) == len(roles)
    models = pd.read_parquet(tmp_path / "out" / "model_level.parquet")
    assert models[["a", "b"]].values.tolist() == [[0.5, 0.7]] and models["diff"].iloc[0] == pytest.approx(0.2)
    page = (tmp_path / "out" / "compare.html").read_text()
    assert "http" not in page.split("<script>")[0] and "L2H1" in page and page.count("cmp-data") >= 2
    assert pd.read_csv(tmp_path / "out" / "compare.csv").shape[0] == 3


def test_different_shapes_use_relative_depth(tmp_path):
    """4 vs 7 layers: depths 0, 1/3, 2/3, 1 are exactly layers 0, 2, 4, 6 of the deeper model."""
    rng = np.random.default_rng(2)
    a, b = rng.random((4, 4)), rng.random((7, 6))
    A = write_report(tmp_path / "a", {"induction": a})
    B = write_report(tmp_path / "b", {"induction": b}, n_kv=3)
    row = compare_reports(A, B, tmp_path / "out").iloc[0]
    want = spearmanr(a.mean(1), b.mean(1)[[0, 2, 4, 6]])[0]
    assert row["method"] == "layer profile by relative depth" and row["n"] == 4
    assert row["spearman"] == pytest.approx(want)
    depth, pa, pb = depth_profiles(np.array([0.0, 1.0]), np.array([0.0, 4.0, 2.0]))  # 2 vs 3 layers
    assert depth.tolist() == [0, 1] and pb.tolist() == [0.0, 2.0]  # B at depths 0 and 1
    assert pd.read_parquet(tmp_path / "out" / "roles_diff.parquet").empty  # no head-by-head roles


def test_refusals_are_one_line_and_force_overrides(tmp_path):
    m = np.eye(3, 4)
    A = write_report(tmp_path / "a", {"induction": m})
    B = write_report(tmp_path / "b", {"induction": m}, version="0.2.0")
    C = write_report(tmp_path / "c", {"induction": m}, params={"taxonomy": {"n_tokens": 128}})
    with pytest.raises(CompareError, match=r"interp 0.1.0 vs 0.2.0; rerun one of them or pass --force"):
        compare_reports(A, B, tmp_path / "o1")
    with pytest.raises(CompareError, match=r"params.taxonomy differ in n_tokens"):
        compare_reports(A, C, tmp_path / "o1")
    assert not (tmp_path / "o1").exists()
    compare_reports(A, B, tmp_path / "o1", force=True)
    assert json.loads((tmp_path / "o1" / "compare.json").read_text())["forced_over"] == ["interp 0.1.0 vs 0.2.0"]
    with pytest.raises(CompareError, match="already holds a comparison"):
        compare_reports(A, A, tmp_path / "o1")
    with pytest.raises(CompareError, match="not an interp report folder"):
        compare_reports(A, tmp_path / "nothing", tmp_path / "o2")
    runner = CliRunner()
    res = runner.invoke(app, ["compare", str(A), str(B), "--out", str(tmp_path / "o3")])
    assert res.exit_code == 2 and "pass --force" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["compare", str(A), str(A), "--out", str(tmp_path / "o4")])
    assert res.exit_code == 0 and "ρ = 1.000" in res.output, res.output


@pytest.mark.skipif(not Path("/usr/bin/chromedriver").exists(), reason="needs chromium + chromium-driver")
def test_compare_page_draws_every_figure(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from test_report_atlas import errors, open_page  # the atlas tests' selenium helpers

    rng = np.random.default_rng(3)
    A = write_report(tmp_path / "a", {"induction": rng.random((3, 4)), "x": rng.random((3, 4))}, layer=[1, 2, 3])
    B = write_report(tmp_path / "b", {"induction": rng.random((5, 4)), "x": rng.random((5, 4))}, layer=[1, 2, 3, 4, 5])
    compare_reports(A, B, tmp_path / "out")
    opts = webdriver.ChromeOptions()
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu"]:
        opts.add_argument(flag)
    opts.binary_location = "/usr/bin/chromium"
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        open_page(drv, tmp_path / "out" / "compare.html")
        figs = drv.find_elements("css selector", ".fig")
        assert len(figs) == 3 and all(f.find_elements("css selector", ".scatterlayer .trace") for f in figs)
        assert not errors(drv)
    finally:
        drv.quit()


@pytest.mark.slow  # two tiny reports (~20 s each on 2 busy cores)
def test_real_tiny_reports_same_and_different_depth(tmp_path):
    from interp.report import run_report
    from interp.testing import tiny_model

    kw = dict(n_tokens=32, progress=False, static=True)
    run_report("tiny-llama", ["attention_basics"], tmp_path / "llama", **kw)
    run_report("tiny-qwen2", ["attention_basics"], tmp_path / "qwen2", **kw)
    run_report(tiny_model("llama", n_layers=3), ["attention_basics"], tmp_path / "llama3", **kw)
    same = compare_reports(tmp_path / "llama", tmp_path / "qwen2", tmp_path / "c1").set_index("score")
    sa, sb = (ScoreTable.read(tmp_path / n / "scores.parquet") for n in ("llama", "qwen2"))
    for score in ("first_token_mass", "entropy"):
        x = ScoreTable.matrix(sa, score, 2, 4).ravel()
        y = ScoreTable.matrix(sb, score, 2, 4).ravel()
        assert same.loc[score, "spearman"] == pytest.approx(spearmanr(x, y)[0])
    deep = compare_reports(tmp_path / "llama3", tmp_path / "llama", tmp_path / "c2").set_index("score")
    s3 = ScoreTable.read(tmp_path / "llama3" / "scores.parquet")
    p3 = ScoreTable.matrix(s3, "entropy", 3, 4).mean(1)[[0, 2]]  # depths 0 and 1 of the 3-layer model
    p2 = ScoreTable.matrix(sa, "entropy", 2, 4).mean(1)
    assert deep.loc["entropy", "n"] == 2 and np.isnan(deep.loc["entropy", "spearman"])  # < 3 points: no ρ
    assert np.allclose(depth_profiles(ScoreTable.matrix(s3, "entropy", 3, 4).mean(1), p2)[1], p3)
