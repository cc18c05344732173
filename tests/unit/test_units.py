"""Work units (``interp.units``): merge(run(unit) for unit in split) is the one-process result, exactly, for every
registered analysis on tiny models; the JSON codec is bit-exact; a bad split is refused."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
import torch

from interp.analyses import registry
from interp.testing import tiny_model
from interp.units import ModelInfo, Unit, check_units, decode, encode, run_local, splitter_for

# small parameters per registered analysis (tiny models have 256 positions); others run with their defaults
SMALL = {
    "attention_basics": {"n_tokens": 40},
    "sinks": {"n_samples": 6, "n_tokens": 24, "batch_size": 4},
    "taxonomy": {"n_samples": 3, "half": 12},
    "retrieval": {"lengths": [300, 340], "depths": [0.0, 50.0], "needles": [0, 2], "buffer": 20,
                  "max_new_tokens": 6},
    "safety": {"n_ships": 2, "n_sahara": 2, "n_refusal": 2, "max_new_tokens": 4, "sahara_candidates": 4},
    "divergence": {"context_tokens": 40, "n_generate": 2},
    "model_divergence": {"ablate": ["L1H2"], "n_tokens": 24},
    "duo_attention": {"steps": 2, "n_tokens": 96, "sink": 4, "recent": 16},
    "vhd": {},
    "span_scaling": {"lengths": [64, 128, 256], "tail": 16, "recent_w": 8},
    "attention_saliency": {"n_tokens": 64, "tile": 24, "far_w": 8},
    "zerotuning": {"tasks": ["category"], "n_candidates": 3, "sweep": [0.5, 3.0], "grid": [0.5, 3.0],
                   "n_calibration": 6, "n_validation": 6, "n_test": 8, "n_random": 1, "batch_size": 6},
    "act": {"tasks": ["sentiment"], "n_candidates": 3, "n_calibration": 6, "n_test": 8, "n_random": 1,
            "batch_size": 6, "threshold": 0.02},
    "attention_redistribution": {"skip_layers": 0, "rho": 0.1, "max_heads": 3, "n_calibration": 4, "n_test": 6,
                                 "n_random": 1, "batch_size": 4},
    "circuits": {"task": "numeric_comparison", "n_prompts": 5, "batch_size": 2, "ig_steps": 2, "heads_per_unit": 3},
    "context_attention": {"n_heads": 2, "grid": [2.0], "n_calibration": 4, "n_test": 6, "n_random": 1,
                          "batch_size": 4},
}
FAMILY = {"vhd": "llava"}
CHAT = {"context_attention"}  # needs a chat template: the tiny tokenizer gets a minimal one


def _with_chat(model):
    tok = model.tokenizer
    tok.chat_template = "<u>{content}</u>"
    tok.apply_chat_template = lambda msgs, tokenize=False, add_generation_prompt=True: (
        "<u>" + msgs[0]["content"] + "</u>\n")
    return model


def _stored(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` as a report part stores it (parquet): list cells read back as arrays on both sides alike."""
    return decode(encode(df))


def _frames_equal(a: dict, b: dict, drop=()):
    assert sorted(a) == sorted(b)
    for name in a:
        x, y = _stored(a[name]), _stored(b[name])
        cols = [c for c in x.columns if c not in drop]
        assert list(x.columns) == list(y.columns), name
        # check_column_type off: a table without columns comes back from parquet with an empty object index
        pd.testing.assert_frame_equal(x[cols].reset_index(drop=True), y[cols].reset_index(drop=True),
                                      check_exact=True, check_column_type=False)


def test_codec_is_bit_exact():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x": rng.standard_normal(7), "n": np.arange(7), "s": list("abcdefg"),
                       "f32": rng.standard_normal(7).astype(np.float32)})
    obj = {"df": df, "a64": rng.standard_normal((3, 4)), "a32": rng.standard_normal((2, 5)).astype(np.float32),
           "t": torch.randn(2, 3, dtype=torch.float64), "i": np.int64(5), "f": 1 / 3, "l": [1, (2, 3)],
           "none": None, "nested": {"deep": np.arange(4, dtype=np.int32)}}
    back = decode(json.loads(json.dumps(encode(obj))))  # through JSON, as a checkpoint line
    pd.testing.assert_frame_equal(back["df"], df, check_exact=True)
    for k in ("a64", "a32"):
        assert back[k].dtype == obj[k].dtype and np.array_equal(back[k], obj[k])
    assert back["t"].dtype == np.float64 and np.array_equal(back["t"], obj["t"].numpy())
    assert back["i"] == 5 and back["f"] == 1 / 3 and back["l"] == [1, [2, 3]] and back["none"] is None
    assert back["nested"]["deep"].dtype == np.int32
    with pytest.raises(TypeError, match="cannot encode a set"):
        encode({"bad": {1, 2}})


def test_check_units_refuses_repeated_keys_and_bad_order():
    with pytest.raises(ValueError, match="repeated keys"):
        check_units([Unit("a", "k", 0), Unit("a", "k", 1)], "a")
    with pytest.raises(ValueError, match="indices must be 0..1"):
        check_units([Unit("a", "k0", 1), Unit("a", "k1", 0)], "a")
    with pytest.raises(ValueError, match="no units"):
        check_units([], "a")


@pytest.mark.parametrize("name", list(registry.REGISTRY))
def test_merge_of_units_is_the_one_process_run(name):
    """For every registered analysis: units run one by one (results through the JSON codec) and merged give
    the tables of the analysis's own ``run``, value for value (float64 sums are never regrouped)."""
    spec = registry.get(name)
    n_ctx = 1024 if name == "retrieval" else 256
    model = tiny_model(FAMILY.get(name, "llama"), n_layers=2, n_ctx=n_ctx)
    if name in CHAT:
        model = _with_chat(model)
    p = spec.params.coerce(SMALL.get(name), where=name)  # an analysis added later: its defaults
    if name not in SMALL:
        from interp.params import ParamError

        try:
            p.check_model(model, name)
        except ParamError as e:
            pytest.skip(f"{name} is new: its defaults do not fit a tiny model ({e}); add it to SMALL")
    torch.manual_seed(0)
    direct = spec.run(model, p, None)
    torch.manual_seed(0)
    merged = run_local(splitter_for(spec), model, p)
    # retrieval's per-sample table records each sample's wall time, which no two runs share
    _frames_equal(direct, merged, drop=("seconds",))


def test_retrieval_splits_one_unit_per_cell_in_official_order():
    spec = registry.get("retrieval")
    p = spec.params.coerce(SMALL["retrieval"], where="retrieval")
    units = splitter_for(spec).split(p)
    assert [u.key for u in units] == ["300|0|0", "300|50|0", "340|0|0", "340|50|0",
                                      "300|0|2", "300|50|2", "340|0|2", "340|50|2"]
    assert [u.index for u in units] == list(range(8))


def test_basics_merge_ignores_completion_order():
    """Units finishing in any order and merged in unit order give the same tables (the executor's rule)."""
    spec = registry.get("attention_basics")
    model = tiny_model("llama", n_layers=2)
    p = spec.params.coerce({"n_tokens": 32}, where="x")
    sp = splitter_for(spec)
    units = sp.split(p)
    assert len(units) == 4
    order = list(units)
    random.Random(3).shuffle(order)
    got = {u.index: decode(encode(sp.run(model, p, u))) for u in order}
    info = ModelInfo(model.name, model.shape)
    merged = sp.merge(info, p, [got[i] for i in range(len(units))])
    _frames_equal(spec.run(model, p, None), merged)


# --- the finer splits: rounds (follow), unit lists, completion order ------------------------------------------

SINKS_REMOVAL = {**SMALL["sinks"], "removal": {"enabled": True, "k": 2, "n_random": 2, "n_samples": 2,
                                               "n_tokens": 16}}


def _shuffled(sp, model, p, seed: int, name: str):
    """The units of every round run in a shuffled order (as workers finish them), merged in unit order."""
    from interp.units import drive

    rng = random.Random(seed)

    def run_round(units):
        order = list(units)
        rng.shuffle(order)
        torch.manual_seed(0)
        got = {u.key: decode(encode(sp.run(model, p, u))) for u in order}
        return [got[u.key] for u in units]

    return drive(sp, ModelInfo(model.name, model.shape), p, run_round, name)


def _units_of(sp, model, p, name):
    """All units of all rounds (run locally to drive the rounds)."""
    seen = []
    run_local(sp, model, p, on_unit=lambda u, s: seen.append(u), analysis=name)
    return seen


@pytest.mark.parametrize("name,params", [("safety", SMALL["safety"]), ("sinks", SINKS_REMOVAL),
                                         ("taxonomy", SMALL["taxonomy"]), ("divergence", SMALL["divergence"])])
def test_finer_splits_merge_exactly_in_any_completion_order(name, params):
    """Each split analysis: merge over units finishing in two shuffled orders == the one-process ``run``."""
    spec = registry.get(name)
    model = tiny_model("llama", n_layers=2)
    p = spec.params.coerce(params, where=name)
    torch.manual_seed(0)
    direct = spec.run(model, p, None)
    sp = splitter_for(spec)
    for seed in (1, 2):
        _frames_equal(direct, _shuffled(sp, model, p, seed, name))


def test_safety_units_ships_per_query_then_sahara_then_refusal_cells():
    spec = registry.get("safety")
    model = tiny_model("llama", n_layers=2)
    p = spec.params.coerce({**SMALL["safety"], "n_ships": 3}, where="safety")
    units = _units_of(splitter_for(spec), model, p, "safety")
    keys = [u.key for u in units]
    assert keys[:4] == ["ships|q0", "ships|q1", "ships|q2", "sahara"]
    conds = ["clean", "ships_top1", "ships_top3", "sahara", "random"]
    assert keys[4:] == [f"refusal|{c}|{j}" for c in conds for j in (0, 1)]
    assert [u.index for u in units] == list(range(len(units)))
    # Sahara searches the top Ships heads of the merged queries, as the one-process run does
    from interp.analyses.ships import ships_dataset

    sh = ships_dataset(model, p.prompts, n=3, top_k=p.top_k, template="paper")
    assert [tuple(h) for h in units[3].payload["candidates"]] == sh.top_heads(p.sahara_candidates)


def test_sinks_units_one_per_condition_batch_sub_analysis_then_removal():
    spec = registry.get("sinks")
    model = tiny_model("llama", n_layers=2)
    p = spec.params.coerce(SINKS_REMOVAL, where="sinks")
    keys = [u.key for u in _units_of(splitter_for(spec), model, p, "sinks")]
    batches = [f"alpha|{c}|{b}" for c in ("prose", "random", "repeated") for b in (0, 4)]
    assert keys[:6] == batches and keys[-1] == "removal"
    assert all(k.startswith("sub|") for k in keys[6:-1]) and len(keys) > 7


def test_taxonomy_and_divergence_units():
    model = tiny_model("llama", n_layers=2)
    tax, div = registry.get("taxonomy"), registry.get("divergence")
    p = tax.params.coerce(SMALL["taxonomy"], where="taxonomy")
    assert [u.key for u in _units_of(splitter_for(tax), model, p, "taxonomy")] == ["types", "waad", "ablation"]
    off = tax.params.coerce({**SMALL["taxonomy"], "ablation": {"enabled": False}}, where="taxonomy")
    assert [u.key for u in _units_of(splitter_for(tax), model, off, "taxonomy")] == ["types", "waad"]
    assert [u.key for u in splitter_for(div).split(div.params())] == ["sample0", "sample1", "sample2"]
