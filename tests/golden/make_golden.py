"""Write the behaviour-preservation goldens (run once, before a refactor; the test compares against them).

    python tests/golden/make_golden.py            # both
    python tests/golden/make_golden.py tiny       # only the tiny-llama report
    python tests/golden/make_golden.py report     # only the default model's default report

- ``tiny_llama_report.csv``: ``interp report --model tiny-llama`` with every analysis that runs on it
  (seed 0), the whole score table sorted by its index columns.
- ``default_scores.csv``: a few default-model scores: Sink_1 (α per head and the model-level rate) on 16
  prose prompts, the three TransformerLens head-detector scores on 4 repeated-random sequences, retrieval
  scores on 2 needles, Ships KL on one AdvBench query.
- ``default_report_scores.parquet``: the README's job, ``interp report --model default`` with the default
  analyses (seed 0), its whole ``scores.parquet`` sorted by the index columns; written on the tree of 2eb11b8,
  before the report was made faster (issue 18), so that the faster job must give the same numbers.
Compared in ``tests/parity/test_golden.py`` (to 1e-6).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pandas as pd

HERE = Path(__file__).parent
# retrieval does not run on tiny-llama: its prompt template alone exceeds the 256-token context
TINY_ANALYSES = ["attention_basics", "sinks", "taxonomy", "divergence", "safety"]
INDEX = ["analysis", "score", "layer", "head", "kv_head"]


def sort_scores(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    if "kv_head" not in df.columns:
        df["kv_head"] = -1
    df["kv_head"] = df["kv_head"].fillna(-1).astype("int64")
    cols = ["model", "analysis", "score", "layer", "head", "kv_head", "value", "n_samples"]
    return df[cols].sort_values(INDEX, kind="stable").reset_index(drop=True)


def tiny_report() -> pd.DataFrame:
    from interp.report import run_report

    with tempfile.TemporaryDirectory() as d:
        res = run_report("tiny-llama", TINY_ANALYSES, Path(d) / "tiny", seed=0, progress=False)
        return sort_scores(res.scores)


def default_report(model="default") -> pd.DataFrame:
    """The default analyses of ``interp report`` on the default model (``model``: the spec or a loaded model)."""
    from interp.analyses import registry
    from interp.report import run_report

    with tempfile.TemporaryDirectory() as d:
        run_report(model, registry.default(), Path(d) / "report", seed=0, progress=False)
        return sort_scores(pd.read_parquet(Path(d) / "report" / "scores.parquet"))


def default_scores() -> pd.DataFrame:
    import torch

    import interp
    from interp.analyses import head_detector, retrieval, ships, sinks
    from interp.scores import ScoreTable

    torch.manual_seed(0)
    model = interp.load_model("default")
    tables = [sinks.sink_scores(model, conditions=("prose",), n_samples=16, n_tokens=64, k=1, eps=0.3, seed=0)]
    ids = head_detector.induction_probe(model, n_samples=4, half=50, seed=0)
    tables.append(head_detector.taxonomy_scores(model, ids))
    recs = retrieval.niah_sweep(model, lengths=[300], depths=[50], needles=[0, 1], max_new_tokens=20)
    counter = retrieval.head_counter(recs)
    mat = retrieval.retrieval_head_scores(counter, model.shape.n_layers, model.shape.n_heads)
    tables.append(ScoreTable.from_matrix(mat, model=model.name, analysis="retrieval", score="retrieval",
                                         n_samples=len(recs)))
    from interp.analyses._safety_data import load_prompts

    query = load_prompts("advbench")[0]
    kl = ships.ships_kl(model, query, template="paper")
    tables.append(ScoreTable.from_matrix(kl, model=model.name, analysis="safety", score="ships_kl", n_samples=1))
    return sort_scores(ScoreTable.concat(tables))


def main(which: list[str]) -> None:
    if not which or "tiny" in which:
        tiny_report().to_csv(HERE / "tiny_llama_report.csv", index=False, float_format="%.17g")
    if not which or "default" in which:
        default_scores().to_csv(HERE / "default_scores.csv", index=False, float_format="%.17g")
    if not which or "report" in which:
        default_report().to_parquet(HERE / "default_report_scores.parquet", index=False)


if __name__ == "__main__":
    main(sys.argv[1:])
