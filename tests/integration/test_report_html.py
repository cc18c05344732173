"""The static report page (``interp report --static``) renders in a real headless Chromium: no console errors,
every figure drawn, no network, and every score section (head, KV-head, layer and model level) holds a drawn
SVG figure or a filled table.

Chromium comes from Debian (``apt-get install -y chromium chromium-driver``; the CI script installs it); the
browser tests skip only when ``/usr/bin/chromium`` is missing. Console errors are read from Chromium's own log
(``--enable-logging=stderr --v=0``); a control page with a deliberate error proves the check can fail.
The atlas numbers (Jaccard, Spearman) are checked against scipy and hand-built sets.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

CHROMIUM = "/usr/bin/chromium"
REPO_SHOTS = Path(__file__).resolve().parents[2] / "reports" / "screenshots"


def screenshots(tmp_path: Path) -> Path:
    """``reports/screenshots`` with ``INTERP_SCREENSHOTS=1``; otherwise a tmp folder (tests never write the repo)."""
    out = REPO_SHOTS if os.environ.get("INTERP_SCREENSHOTS") == "1" else tmp_path / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    return out
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="needs /usr/bin/chromium (apt-get install -y chromium chromium-driver)")


def chromium(url: str, tmp_path: Path, *mode: str, budget_ms: int = 10000) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
             f"--virtual-time-budget={budget_ms}", "--hide-scrollbars"]
    return subprocess.run([CHROMIUM, *flags, *mode, url], capture_output=True, text=True, timeout=180)


def console_errors(stderr: str) -> list[str]:
    """Every console message and uncaught exception in Chromium's log. Headless Chromium logs them all at
    INFO without the console level, so any message counts: the report page is expected to log nothing."""
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln]


def network_requests(html: str) -> list[str]:
    return re.findall(r"""<(?:script|link|img)[^>]+(?:src|href)=["']?(https?:[^"' >]+)""", html)


PROBE = """<script>setTimeout(function () {
  var bad = [];
  document.querySelectorAll(".score").forEach(function (row, i) {
    var svg = row.querySelector(".main-svg"), top = row.querySelector(".top");
    if (!svg || !top) { bad.push(i + ":missing"); return; }
    var a = svg.getBoundingClientRect(), b = top.getBoundingClientRect();
    if (a.right > b.left + 1) bad.push(i + ":" + Math.round(a.right) + ">" + Math.round(b.left));
  });
  document.body.setAttribute("data-overlaps", bad.join(";"));
}, 1000);</script>"""


SECTIONS = """<script>setTimeout(function () {
  var bad = [], ids = [];
  document.querySelectorAll(".score-section").forEach(function (sec) {
    ids.push(sec.id);
    var figs = sec.querySelectorAll(".fig");
    figs.forEach(function (f) {
      var svg = f.querySelector(".main-svg");
      var drawn = f.querySelector(".heatmaplayer image, .barlayer .point path");
      if (!svg || svg.getBoundingClientRect().width < 100 || !drawn) bad.push(sec.id + ":figure");
    });
    if (!figs.length && sec.querySelectorAll("table.model-level tr").length < 2) bad.push(sec.id + ":empty");
  });
  document.body.setAttribute("data-sections", ids.join(";"));
  document.body.setAttribute("data-empty", bad.join(";"));
}, 1500);</script>"""


def expected_sections(scores: pd.DataFrame) -> list[str]:
    """Section ids the page must hold: one per non-model-level (analysis, score), one model-level table per
    analysis with model-level rows."""
    out = []
    for a in dict.fromkeys(scores["analysis"]):
        sub = scores[scores["analysis"] == a]
        out += [f"{a}-{s}" for s in dict.fromkeys(sub.loc[sub["level"] != "model", "score"])]
        out += [f"{a}-model-level"] if (sub["level"] == "model").any() else []
    return out


def probe_sections(page: Path, tmp_path: Path) -> tuple[list[str], list[str], subprocess.CompletedProcess]:
    """(section ids, sections without a drawn figure / filled table) of ``page`` laid out in Chromium."""
    probed = tmp_path / "sections.html"
    probed.write_text(page.read_text().replace("</body>", SECTIONS + "</body>"))
    res = chromium(probed.as_uri(), tmp_path, "--dump-dom", "--window-size=1280,2000", budget_ms=20000)
    assert res.returncode == 0, res.stderr[-2000:]
    got = re.search(r'data-sections="([^"]*)"', res.stdout)
    empty = re.search(r'data-empty="([^"]*)"', res.stdout)
    assert got is not None and empty is not None, "the probe did not run"
    split = lambda m: [x for x in m.group(1).split(";") if x]  # noqa: E731
    return split(got), split(empty), res


def focus_screenshot(page: Path, ids: list[str], shot: Path, tmp_path: Path) -> None:
    """A screenshot of ``page`` showing only the sections ``ids`` (hidden after the figures were drawn)."""
    js = ("<script>setTimeout(function(){var keep=" + repr(list(ids)).replace("'", '"') + ";"
          "document.querySelectorAll('.score-section').forEach(function(s){if(keep.indexOf(s.id)<0)"
          "s.style.display='none';});document.querySelectorAll('h2, body > p, body > div, nav')"
          ".forEach(function(e){e.style.display='none';});}, 1500);</script>")
    focus = tmp_path / "focus.html"
    focus.write_text(page.read_text().replace("</body>", js + "</body>"))
    res = chromium(focus.as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1280,1100", budget_ms=20000)
    assert shot.exists() and shot.stat().st_size > 20_000, res.stderr[-2000:]


@needs_chromium
def test_section_probe_catches_empty_sections(tmp_path):
    """The old bug: a layer-level score rendered as a heading and "n_samples 2", nothing else."""
    page = tmp_path / "p.html"
    page.write_text("<html><body><section class='score-section' id='sinks-resid_peak'><h3>resid_peak</h3>"
                    "<p class='meta'>n_samples 2</p></section><section class='score-section' id='a-model-level'>"
                    "<table class='model-level'><tr><th>score</th></tr><tr><td>x</td></tr></table></section>"
                    "</body></html>")
    ids, empty, _ = probe_sections(page, tmp_path)
    assert ids == ["sinks-resid_peak", "a-model-level"] and empty == ["sinks-resid_peak:empty"]


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    from interp.report import run_report

    out = tmp_path_factory.mktemp("html") / "tiny"
    run_report("tiny-llama", ["attention_basics"], out, n_tokens=40, progress=False, static=True)
    return out


@needs_chromium
def test_console_check_catches_errors(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>console.error('planted error'); null.boom();</script></body></html>")
    res = chromium(bad.as_uri(), tmp_path, "--dump-dom", budget_ms=1000)
    errs = console_errors(res.stderr)
    assert any("planted error" in e for e in errs) and any("Uncaught" in e for e in errs), res.stderr[-2000:]
    good = tmp_path / "good.html"
    good.write_text("<html><body><p id='x'></p><script>document.getElementById('x').textContent = 'ok';"
                    "</script></body></html>")
    res = chromium(good.as_uri(), tmp_path, "--dump-dom", budget_ms=1000)
    assert not console_errors(res.stderr) and '<p id="x">ok</p>' in res.stdout


@pytest.mark.slow  # builds a report and starts Chromium twice (~20-60 s on 2 busy cores)
@needs_chromium
def test_report_renders_in_chromium(tiny_report, tmp_path):
    page = tiny_report / "report.html"
    html = page.read_text()
    assert not network_requests(html), "the page must be self-contained"
    n_figs = html.count("Plotly.newPlot(")
    assert n_figs == 3  # first_token_mass, entropy, atlas
    # probe the laid-out page: each figure's SVG must stay left of its top-heads table (no overlap)
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("</body>", PROBE + "</body>"))
    res = chromium(probed.as_uri(), tmp_path, "--dump-dom", "--window-size=1280,2000")
    assert res.returncode == 0, res.stderr[-2000:]
    overlaps = re.search(r'data-overlaps="([^"]*)"', res.stdout)
    assert overlaps is not None and overlaps.group(1) == "", overlaps and overlaps.group(1)
    assert not console_errors(res.stderr), console_errors(res.stderr)
    dom = res.stdout
    for i in range(1, n_figs + 1):  # every figure div got its SVG drawn by plotly.js
        start = dom.index(f'id="fig{i}"')
        end = dom.find('id="fig', start + 10)
        chunk = dom[start: end if end > 0 else None]
        assert 'class="main-svg"' in chunk and "xtick" in chunk, f"figure {i} did not render"
    assert "Atlas" in dom and "L0H" in dom or "L1H" in dom
    ids, empty, _ = probe_sections(page, tmp_path)
    assert ids == ["attention_basics-first_token_mass", "attention_basics-entropy"] and not empty

    shot = tmp_path / "shot.png"
    res = chromium(page.as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1280,2000")
    assert shot.exists() and shot.stat().st_size > 20_000, res.stderr[-2000:]
    shutil.copy(shot, screenshots(tmp_path) / "report_tiny.png")


TINY_PARAMS = {"sinks": {"n_samples": 8}, "duo_attention": {"steps": 1, "n_tokens": 96, "sink": 4, "recent": 16}}


@pytest.mark.slow  # three tiny reports (~20-40 s each on 2 busy cores) and Chromium
@needs_chromium
@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_every_level_renders_on_tiny_models(family, tmp_path):
    """Head, KV-head (DuoAttention gates), layer (resid_peak, massive_acts, secondary/hidden sinks) and model
    level scores of a tiny model: every section holds a drawn figure or a filled table, no console errors."""
    from interp.report import run_report

    res = run_report(f"tiny-{family}", ["attention_basics", "sinks", "duo_attention"], tmp_path / "r",
                     params=TINY_PARAMS, n_tokens=40, progress=False, static=True)
    assert set(res.scores["level"]) == {"head", "kv_head", "layer", "model"}
    ids, empty, chrome = probe_sections(tmp_path / "r" / "report.html", tmp_path)
    assert ids == expected_sections(res.scores) and not empty, empty
    assert not console_errors(chrome.stderr), console_errors(chrome.stderr)
    assert {"sinks-resid_peak", "sinks-massive_acts", "duo_attention-duo_alpha"} <= set(ids)
    if family == "llama":
        focus_screenshot(tmp_path / "r" / "report.html", ["sinks-resid_peak", "duo_attention-duo_alpha"],
                         screenshots(tmp_path) / "report_tiny_levels.png", tmp_path)


@pytest.mark.slow  # the default model's default report: several minutes on 2 busy cores
@needs_chromium
def test_default_model_report_every_section_renders(tmp_path):
    from interp.report import run_report

    res = run_report("default", None, tmp_path / "default", progress=False, static=True)
    page = tmp_path / "default" / "report.html"
    layer_scores = sorted(set(res.scores.loc[res.scores["level"] == "layer", "score"]))
    assert {"resid_peak", "massive_acts", "secondary_sinks", "hidden_sinks_newline"} <= set(layer_scores)
    ids, empty, chrome = probe_sections(page, tmp_path)
    assert ids == expected_sections(res.scores) and not empty, empty
    assert not console_errors(chrome.stderr), console_errors(chrome.stderr)
    focus_screenshot(page, ["sinks-resid_peak", "sinks-massive_acts"],
                     screenshots(tmp_path) / "report_default_layers.png", tmp_path)


def test_render_every_level_without_a_browser():
    """Each level's section carries its figure kind: heatmap (head, KV head), bar (layer), table (model)."""
    from interp.report.html import render_report
    from interp.scores import ScoreTable

    class Shape:
        n_layers, n_heads, n_kv_heads, d_head = 3, 4, 2, 8

    rng = np.random.default_rng(1)
    c = dict(model="m", analysis="t", n_samples=2)
    scores = ScoreTable.concat([ScoreTable.from_matrix(rng.random((3, 4)), score="h", **c),
                                ScoreTable.from_matrix(rng.random((3, 2)), score="kv", kv=True, **c),
                                ScoreTable.from_layers(rng.random(3), score="lay", **c),
                                ScoreTable.scalar(0.25, score="rate", ci_low=0.1, ci_high=0.4, **c)])
    html = render_report(scores, model_name="m", shape=Shape, top_k=3)
    assert html == render_report(scores, model_name="m", shape=Shape, top_k=3)  # deterministic
    sections = re.findall(r"<section class='score-section' id='([^']+)'>(.*?)</section>", html, flags=re.S)
    assert [sid for sid, _ in sections] == expected_sections(scores) == ["t-h", "t-kv", "t-lay", "t-model-level"]
    body = dict(sections)
    assert '"type":"heatmap"' in body["t-h"] and re.search(r"<td>L\dH\d</td>", body["t-h"])
    assert '"type":"heatmap"' in body["t-kv"] and re.search(r"<td>L\dKV\d</td>", body["t-kv"])
    assert '"type":"bar"' in body["t-lay"] and "top 3 layers" in body["t-lay"]
    assert "<td>rate</td><td>0.25</td><td>0.1</td><td>0.4</td><td>2</td>" in body["t-model-level"]
    old = render_report(scores.drop(columns="level"), model_name="m", shape=Shape, top_k=3)  # pre-level table
    assert old == html


def test_atlas_matches_independent_computation():
    from scipy.stats import spearmanr

    from interp.report.html import atlas_tables, render_report

    rng = np.random.default_rng(0)
    n_layers, n_heads = 3, 4
    a = rng.normal(size=(n_layers, n_heads))
    b = a + 0.3 * rng.normal(size=a.shape)
    c = -a
    rows = []
    for name, mat in [("a", a), ("b", b), ("c", c)]:
        for layer in range(n_layers):
            for head in range(n_heads):
                rows.append(dict(model="m", analysis="t", score=name, layer=layer, head=head,
                                 value=mat[layer, head], n_samples=1))
    scores = pd.DataFrame(rows)
    jac, rho = atlas_tables(scores, k=3)
    mats = {"a": a, "b": b, "c": c}
    top = {n: {divmod(int(i), n_heads) for i in np.argsort(-m.ravel())[:3]} for n, m in mats.items()}
    for x in "abc":
        for y in "abc":
            want = len(top[x] & top[y]) / len(top[x] | top[y])
            assert jac.loc[f"t/{x}", f"t/{y}"] == pytest.approx(want)
            m = {"a": a, "b": b, "c": c}
            assert rho.loc[f"t/{x}", f"t/{y}"] == pytest.approx(spearmanr(m[x].ravel(), m[y].ravel())[0])
    assert jac.loc["t/a", "t/c"] == 0 and rho.loc["t/a", "t/c"] == pytest.approx(-1)

    class Shape:
        n_layers, n_heads, n_kv_heads, d_head = 3, 4, 2, 8

    html = render_report(scores, model_name="m", shape=Shape, top_k=3)
    assert html.count("Plotly.newPlot(") == 4 and len(html) > 1_000_000  # plotly.js inlined
    assert html == render_report(scores, model_name="m", shape=Shape, top_k=3)  # deterministic page
