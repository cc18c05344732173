"""The report page renders in a real headless Chromium: no console errors, every figure drawn, no network.

Chromium comes from Debian (``apt-get install -y chromium chromium-driver``; the CI script installs it); the
browser tests skip only when ``/usr/bin/chromium`` is missing. Console errors are read from Chromium's own log
(``--enable-logging=stderr --v=0``); a control page with a deliberate error proves the check can fail.
The atlas numbers (Jaccard, Spearman) are checked against scipy and hand-built sets.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "reports" / "screenshots"
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


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    from interp.report import run_report

    out = tmp_path_factory.mktemp("html") / "tiny"
    run_report("tiny-llama", ["attention_basics"], out, n_tokens=40, progress=False)
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

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = tmp_path / "shot.png"
    res = chromium(page.as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1280,2000")
    assert shot.exists() and shot.stat().st_size > 20_000, res.stderr[-2000:]
    shutil.copy(shot, SCREENSHOTS / "report_tiny.png")


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
