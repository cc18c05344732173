"""The head atlas page in a real headless Chromium (selenium + Debian's chromium/chromium-driver, real clicks).

Checks: the head map renders every head with its planted roles; clicking a head opens a card whose values, ranks
and percentiles equal the score table (rank and percentile recomputed here); search and role filters work; the
score browser draws a chosen score with the right top heads; the attention view equals the dense float64 pattern's
top-k; no console errors. Control pages prove the checks can fail (a planted JS error; a card with a wrong value).
Screenshots go to ``reports/screenshots/`` only with ``INTERP_SCREENSHOTS=1`` (else a tmp folder).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from interp.report.atlas import cluster_entry, render_atlas
from interp.report.example import build_example, decode, example_ids
from interp.report.roles import assign_roles
from interp.scores import ScoreTable

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
needs_browser = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(DRIVER).exists()),
    reason="needs chromium + chromium-driver (apt-get install -y chromium chromium-driver)")
REPO_SHOTS = Path(__file__).resolve().parents[2] / "reports" / "screenshots"


def screenshot_dir(tmp_path: Path) -> Path:
    out = REPO_SHOTS if os.environ.get("INTERP_SCREENSHOTS") == "1" else tmp_path / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def model():
    from interp.testing import tiny_model

    return tiny_model("llama", n_layers=2)


@pytest.fixture(scope="module")
def planted(model):
    """Scores on the tiny model's shape (2 layers × 4 heads, 2 KV heads) with known roles."""
    s = model.shape
    rng = np.random.default_rng(0)
    c = dict(model=model.name, n_samples=4)
    induction = rng.uniform(0, 0.2, (s.n_layers, s.n_heads))
    induction[1, 2] = 0.7
    prev = rng.uniform(0, 0.25, (s.n_layers, s.n_heads))
    prev[0, 3] = 0.5
    sink = rng.uniform(0, 0.25, (s.n_layers, s.n_heads))
    sink[0, :2] = 0.9
    duo = np.zeros((s.n_layers, s.n_kv_heads))
    duo[1, 0] = 1.0
    return ScoreTable.concat([
        ScoreTable.from_matrix(induction, analysis="taxonomy", score="induction", **c),
        ScoreTable.from_matrix(prev, analysis="taxonomy", score="previous_token", **c),
        ScoreTable.from_matrix(sink, analysis="sinks", score="sink_alpha_prose", **c),
        ScoreTable.from_matrix(duo, analysis="duo_attention", score="duo_retrieval_head", kv=True, **c),
        ScoreTable.from_layers(rng.random(s.n_layers), analysis="sinks", score="resid_peak", **c),
        ScoreTable.scalar(0.25, analysis="sinks", score="sink_rate_prose", ci_low=0.1, ci_high=0.4, **c)])


@pytest.fixture(scope="module")
def example(model):
    return build_example(model, 48)


@pytest.fixture(scope="module")
def page(planted, model, example, tmp_path_factory):
    p = tmp_path_factory.mktemp("atlas") / "atlas.html"
    p.write_text(render_atlas(planted, model_name=model.name, shape=model.shape, example=example))
    return p


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        pytest.skip("needs chromium + chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
              "--disable-background-networking", "--disable-component-update", "--no-first-run"]:
        opts.add_argument(a)
    opts.binary_location = CHROMIUM
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield drv
    drv.quit()


LOGS: list[dict] = []  # browser log entries read so far (reading the log empties it)


def open_page(drv, path: Path, timeout: float = 30):
    """Load ``path``; wait until the page says it is ready, or logged something (an error stops the script)."""
    from selenium.webdriver.support.ui import WebDriverWait

    LOGS.clear()
    drv.get_log("browser")  # drop the previous page's messages
    drv.get(path.as_uri())

    def done(d):
        LOGS.extend(d.get_log("browser"))
        return d.execute_script("return document.body.dataset.ready === '1'") or LOGS

    WebDriverWait(drv, timeout).until(done)
    return drv


def errors(drv) -> list[str]:
    """Console errors, warnings and uncaught exceptions since the page was opened."""
    LOGS.extend(drv.get_log("browser"))
    return [e["message"] for e in LOGS if e["level"] in ("SEVERE", "WARNING")]


def css(drv, sel):
    from selenium.webdriver.common.by import By

    return drv.find_elements(By.CSS_SELECTOR, sel)


def card_values(drv) -> dict[str, tuple[float, str, float]]:
    """``{"analysis/score": (value, "rank / n", percentile)}`` as the open card shows them."""
    out = {}
    for row in css(drv, "#card-scores tr[data-score]"):
        v = row.find_element("css selector", "td.value")
        out[row.get_attribute("data-score")] = (float(v.get_attribute("data-value")),
                                                row.find_element("css selector", "td.rank").text,
                                                float(row.find_element("css selector", "td.pct").text))
    return out


def expected_card(scores: pd.DataFrame, layer: int, head: int, group: int) -> dict:
    """The card's numbers computed independently: rank = 1 + #heads strictly above, pct = share ≤ value."""
    out = {}
    for (a, s, level), sub in scores[scores["level"].isin(["head", "kv_head"])].groupby(["analysis", "score",
                                                                                       "level"]):
        col, idx = ("head", head) if level == "head" else ("kv_head", head // group)
        v = float(sub.loc[(sub["layer"] == layer) & (sub[col] == idx), "value"].iloc[0])
        vals = sub["value"].dropna().to_numpy()
        out[f"{a}/{s}"] = (v, f"{int((vals > v).sum()) + 1} / {len(vals)}", round(100 * (vals <= v).mean(), 1))
    return out


def test_example_topk_equals_dense_float64_pattern(model, example):
    from interp.testing import dense_patterns

    ids = example_ids(model, 48)
    assert ids.shape == (1, 48) and bool((ids[0, :24] == ids[0, 24:]).all())  # second half repeats the first
    A = dense_patterns(model, ids)[:, 0].numpy()  # [layer, head, query_pos, key_pos]
    idx, prob = decode(example)
    want = np.sort(A, axis=-1)[..., ::-1][..., :3]
    valid = np.arange(48)[:, None] >= np.arange(3)[None, :]  # query i has i + 1 keys
    assert np.abs(prob - want)[..., valid].max() <= 1 / 510 + 1e-6
    got = np.take_along_axis(A, idx, axis=-1)  # the chosen keys really carry those weights
    assert np.abs(got - want)[..., valid].max() < 1e-5
    assert example["tokens"] == [model.tokenizer.decode([int(t)]) for t in ids[0]]


@needs_browser
def test_console_check_and_value_check_can_fail(browser, planted, model, example, tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>console.error('planted error'); null.boom();</script></body></html>")
    open_page(browser, bad)
    errs = errors(browser)
    assert any("planted error" in e for e in errs) and any("boom" in e for e in errs), errs
    wrong = planted.copy()
    wrong.loc[(wrong["score"] == "induction") & (wrong["layer"] == 1) & (wrong["head"] == 2), "value"] = 0.123
    ctrl = tmp_path / "wrong.html"
    ctrl.write_text(render_atlas(wrong, model_name=model.name, shape=model.shape, example=example))
    open_page(browser, ctrl)
    css(browser, "#cell-L1H2")[0].click()
    assert card_values(browser) != expected_card(planted, 1, 2, 2)  # the comparison sees a wrong value


@needs_browser
def test_head_map_renders_roles_and_kv_groups(browser, page, planted, model):
    open_page(browser, page)
    s = model.shape
    cells = css(browser, "#headmap .cell")
    assert len(cells) == s.n_layers * s.n_heads
    roles = assign_roles(planted, s)
    for c in cells:
        name = c.get_attribute("data-name")
        want = sorted(set(roles.loc[roles["name"] == name, "role"]))
        assert sorted(filter(None, c.get_attribute("data-roles").split(" "))) == want, name
    assert css(browser, "#cell-L1H2")[0].get_attribute("data-roles") == "induction"
    assert css(browser, "#cell-L1H0")[0].get_attribute("data-roles") == "duo_retrieval"  # KV group 0: H0, H1
    assert "kv1" in css(browser, "#cell-L0H2")[0].get_attribute("class")  # second KV group shaded
    counts = {lab.get_attribute("data-role"): lab.find_element("css selector", ".count").text
              for lab in css(browser, "#legend .role-filter")}
    assert counts["sink"] == "(2)" and counts["induction"] == "(1)" and counts["duo_retrieval"] == "(2)"
    assert not errors(browser)


@needs_browser
def test_click_opens_card_with_the_score_table_numbers(browser, page, planted, tmp_path):
    open_page(browser, page)
    for layer, head in [(1, 2), (0, 3)]:
        css(browser, f"#cell-L{layer}H{head}")[0].click()
        assert css(browser, "#card-title")[0].text == f"L{layer}H{head}"
        got, want = card_values(browser), expected_card(planted, layer, head, 2)
        assert got.keys() == want.keys()
        for k in want:
            assert got[k][0] == pytest.approx(want[k][0], rel=1e-6) and got[k][1:] == want[k][1:], k
    css(browser, "#cell-L1H2")[0].click()
    roles = [li.get_attribute("data-role") for li in css(browser, "#card-roles li")]
    assert roles == ["induction"] and "induction > 0.3" in css(browser, "#card-roles")[0].text
    rows = css(browser, "#card-attn tr.attn-row")  # the last query's top-3 keys
    assert len(rows) == 3 and all(0 <= int(r.find_element("css selector", ".key").text) < 48 for r in rows)
    css(browser, "#card-tokens .tok[data-pos='30']")[0].click()
    assert css(browser, "#card-attn th")[0].text == "query 30"
    assert css(browser, "#card-dist .main-svg") and not errors(browser)
    resid = planted[(planted["score"] == "resid_peak") & (planted["layer"] == 1)]["value"].iloc[0]
    cell = css(browser, "#card-layer-scores tr[data-score='sinks/resid_peak'] td")[2]
    assert float(cell.get_attribute("data-value")) == pytest.approx(resid, rel=1e-12)
    browser.save_screenshot(str(screenshot_dir(tmp_path) / "atlas_tiny_card.png"))


@needs_browser
def test_search_and_role_filters(browser, page):
    from selenium.webdriver.common.keys import Keys

    open_page(browser, page)
    box = css(browser, "#search")[0]
    box.send_keys("l0h3", Keys.ENTER)
    assert css(browser, "#card-title")[0].text == "L0H3" and css(browser, ".cell.found")[0].get_attribute(
        "data-name") == "L0H3"
    box.clear()
    box.send_keys("L9H0")
    assert "2 layers × 4 heads" in css(browser, "#search-msg")[0].text
    css(browser, "#legend .role-filter[data-role='sink'] input")[0].click()
    lit = sorted(c.get_attribute("data-name") for c in css(browser, ".cell:not(.dim)"))
    assert lit == ["L0H0", "L0H1"]
    css(browser, "#legend .role-filter[data-role='induction'] input")[0].click()  # union of checked roles
    assert sorted(c.get_attribute("data-name") for c in css(browser, ".cell:not(.dim)")) == ["L0H0", "L0H1", "L1H2"]
    css(browser, "#clear-filters")[0].click()
    assert not css(browser, ".cell.dim") and not errors(browser)


@needs_browser
def test_score_browser_draws_the_chosen_score(browser, page, planted):
    from selenium.webdriver.support.ui import Select

    open_page(browser, page)
    sel = Select(css(browser, "#score-select")[0])
    groups = [g.get_attribute("label") for g in css(browser, "#score-select optgroup")]
    assert groups == ["taxonomy", "sinks", "duo_attention"]
    sel.select_by_visible_text("sink_alpha_prose (head)")
    assert css(browser, "#browser")[0].get_attribute("data-score") == "sinks/sink_alpha_prose"
    assert css(browser, "#browser-heat .heatmaplayer image") and css(browser, "#browser-dist .barlayer")
    sub = planted[planted["score"] == "sink_alpha_prose"].sort_values(["value", "layer", "head"],
                                                                      ascending=[False, True, True])
    want = [f"L{r.layer}H{r.head}" for r in sub.itertuples()][:8]
    got = [r.find_elements("css selector", "td")[1].text for r in css(browser, "#browser-top-table tr.top-row")]
    assert got == want
    sel.select_by_visible_text("resid_peak (layer)")
    assert css(browser, "#browser-heat .barlayer .point path")
    model_rows = [r.text for r in css(browser, "#model-level table.model-level tr")]
    assert model_rows[1] == "sink_rate_prose 0.25 0.1 0.4 4"
    assert not errors(browser)


@pytest.fixture(scope="module")
def clustered(planted, model):
    """The planted scores plus head_similarity cluster labels: sizes 4 / 2 / 2 over the 8 heads."""
    labels = np.array([[0, 0, 1, 2], [1, 1, 2, 1]], float)
    return ScoreTable.concat([planted, ScoreTable.from_matrix(labels, analysis="head_similarity", score="cluster",
                                                              model=model.name, n_samples=4)])


def test_cluster_entry_is_the_score_tables_labels(clustered, planted, model):
    assert cluster_entry(clustered, model.shape)["labels"] == [0, 0, 1, 2, 1, 1, 2, 1]
    assert cluster_entry(planted, model.shape) is None


@needs_browser
def test_cluster_view_lists_members_and_roles_and_shows_a_cluster(browser, clustered, planted, model, tmp_path):
    s = model.shape
    page = tmp_path / "clusters.html"
    page.write_text(render_atlas(clustered, model_name=model.name, shape=s))
    open_page(browser, page)
    sub = clustered[clustered["score"] == "cluster"]
    want = {int(c): sorted(f"L{r.layer}H{r.head}" for r in g.itertuples()) for c, g in sub.groupby("value")}
    rows = css(browser, "#cluster-table tr.cluster-row")
    got = {int(r.get_attribute("data-cluster")): sorted(r.get_attribute("data-members").split()) for r in rows}
    assert got == want
    assert [int(r.find_element("css selector", "td.size").text) for r in rows] == [4, 2, 2]  # largest first
    roles = assign_roles(clustered, s)
    for r in rows:
        members = r.get_attribute("data-members").split()
        expect = roles[roles["name"].isin(members)].drop_duplicates(["name", "role"])["role"].value_counts()
        shown = {x.get_attribute("data-role"): int(x.get_attribute("data-count"))
                 for x in r.find_elements("css selector", "td.roles span[data-role]")}
        assert shown == expect.to_dict(), r.get_attribute("data-cluster")
    rows[2].click()  # cluster 2: L0H3 (previous token) and L1H2 (induction)
    lit = sorted(c.get_attribute("data-name") for c in css(browser, "#headmap .cell:not(.cdim)"))
    assert lit == want[int(rows[2].get_attribute("data-cluster"))]
    rows[2].click()
    assert not css(browser, "#headmap .cell.cdim")
    css(browser, "#cluster-colour")[0].click()
    fill = {c.get_attribute("data-name"): c.value_of_css_property("background-color")
            for c in css(browser, "#headmap .cell")}
    for members in want.values():
        assert len({fill[n] for n in members}) == 1
    assert len({fill[m[0]] for m in want.values()}) == len(want)
    assert not errors(browser)
    page.write_text(render_atlas(planted, model_name=model.name, shape=s))  # no head_similarity: no view
    open_page(browser, page)
    assert not css(browser, "#clusters") and not errors(browser)


@pytest.mark.slow  # a tiny report (~20-40 s on 2 busy cores) and Chromium
@needs_browser
def test_report_writes_roles_and_the_atlas(browser, tmp_path):
    from interp.report import run_report

    run_report("tiny-llama", ["attention_basics", "sinks"], tmp_path / "r",
                     params={"sinks": {"n_samples": 4}}, n_tokens=40, progress=False)
    scores = ScoreTable.read(tmp_path / "r" / "scores.parquet")
    roles = pd.read_parquet(tmp_path / "r" / "roles.parquet")
    from interp.testing import tiny_model

    shape = tiny_model("llama").shape
    pd.testing.assert_frame_equal(roles, assign_roles(scores, shape), check_dtype=False)
    open_page(browser, tmp_path / "r" / "report.html")
    css(browser, "#cell-L1H3")[0].click()
    got, want = card_values(browser), expected_card(scores, 1, 3, shape.n_heads // shape.n_kv_heads)
    assert got.keys() == want.keys() and len(want) > 5
    assert all(got[k][0] == pytest.approx(want[k][0], rel=1e-6) and got[k][1:] == want[k][1:] for k in want)
    assert not errors(browser)
    shot = screenshot_dir(tmp_path) / "atlas_tiny_map.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    shutil.rmtree(tmp_path / "r")
