"""Typed analysis parameters (``interp.params``): types, ranges, choices, unknown keys and nested groups are
rejected with one line naming the key, the value and what is allowed; every registered analysis declares a
dataclass whose defaults validate; the sinks/taxonomy sub-analysis sizes reach the functions they call."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from interp.params import ParamError, Params, param, sub


@dataclass(frozen=True)
class Inner(Params):
    enabled: bool = param(True, "on")
    n: int = param(4, "n", ge=1)


@dataclass(frozen=True)
class Outer(Params):
    n_samples: int = param(100, "samples", ge=1)
    eps: float = param(0.3, "eps", gt=0, lt=1)
    names: tuple[str, ...] = param(("a",), "names", choices=("a", "b"))
    path: str | None = param(None, "file")
    inner: Inner = sub(Inner)


@pytest.mark.parametrize("d, match", [
    ({"n_samples": "ten"}, r"x\.n_samples = 'ten': expected an int, got str"),
    ({"n_samples": True}, r"x\.n_samples = True: expected an int"),
    ({"n_samples": 2.5}, r"x\.n_samples = 2\.5: expected an int"),
    ({"n_samples": -3}, r"x\.n_samples = -3: must be >= 1"),
    ({"eps": 1}, r"x\.eps = 1\.0: must be < 1"),
    ({"eps": "0.3"}, r"x\.eps = '0\.3': expected a number"),
    ({"names": ["c"]}, r"x\.names = \['c'\]: 'c' is not allowed; choose from a, b"),
    ({"names": "a"}, r"x\.names = 'a': expected a list of strings"),
    ({"names": [1]}, r"x\.names\[0\] = 1: expected a string"),
    ({"path": 3}, r"x\.path = 3: expected a string or none"),
    ({"nope": 1}, r"x: unknown parameter 'nope'; valid keys: n_samples, eps, names, path, inner"),
    ({"inner": {"n": 0}}, r"x\.inner\.n = 0: must be >= 1"),
    ({"inner": {"m": 0}}, r"x\.inner: unknown parameter 'm'; valid keys: enabled, n"),
    ({"inner": 3}, r"x\.inner = 3: expected a table"),
])
def test_bad_values_one_line(d, match):
    with pytest.raises(ParamError, match=match) as e:
        Outer.coerce(d, where="x")
    assert "\n" not in str(e.value)


def test_coerce_converts_and_nests():
    p = Outer.coerce({"eps": 1e-1, "names": ["b", "a"], "inner": False}, where="x")
    assert p.names == ("b", "a") and p.inner == Inner(enabled=False) and p.eps == 0.1
    assert Outer.coerce(None) == Outer() and Outer.coerce(p) is p
    assert p.to_dict() == {"n_samples": 100, "eps": 0.1, "names": ["b", "a"], "path": None,
                           "inner": {"enabled": False, "n": 4}}
    assert Outer.from_dict(p.to_dict()) == p  # round trip through the manifest's form
    assert Outer(eps=1, names=["a"]).eps == 1.0 and Outer(names=["a"]).names == ("a",)  # Python-side values
    with pytest.raises(ParamError, match="Outer.n_samples = 0"):
        Outer(n_samples=0).validate()
    lines = Outer.describe("o.")
    assert "o.eps (a number, default 0.3): eps [> 0; < 1]" in lines and any(ln.startswith("o.inner.n ") for ln in lines)


def test_every_registered_analysis_has_typed_defaults():
    from interp.analyses import registry

    for name, spec in registry.REGISTRY.items():
        cls = spec.load().params
        assert issubclass(cls, Params), name
        cls().validate(f"params.{name}") if name != "model_divergence" else None
        for line in cls.describe():
            assert ": " in line and "default" in line, (name, line)
    with pytest.raises(ParamError, match="model_b"):  # needs a second model or heads to ablate
        registry.get("model_divergence").params().validate("params.model_divergence")


def test_analysis_checks(tmp_path, tiny_llama):
    from interp.analyses.basic import BasicParams
    from interp.analyses.head_detector import TaxonomyParams
    from interp.analyses.retrieval import RetrievalParams
    from interp.analyses.sinks import SinksParams
    from interp.analyses.vhd import VhdParams

    with pytest.raises(ParamError, match="texts_file = .*: no such file"):
        BasicParams(texts_file=str(tmp_path / "missing.txt")).validate("p")
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(ParamError, match="the file holds no text"):
        BasicParams(texts_file=str(tmp_path / "empty.txt")).validate("p")
    with pytest.raises(ParamError, match=r"p\.lengths = \[\]: give at least one value"):
        RetrievalParams(lengths=()).validate("p")
    with pytest.raises(ParamError, match="150 is not larger than buffer = 200"):
        RetrievalParams(lengths=(150, 500)).validate("p")
    with pytest.raises(ParamError, match=r"p\.lengths = \[500, 1000\]: 1050 tokens .* context of 256 tokens; "
                                         "choose lengths <= 206"):
        RetrievalParams().check_model(tiny_llama, "p")
    with pytest.raises(ParamError, match=r"p\.streaming\.n_tokens = 300: 300 tokens do not fit"):
        SinksParams.coerce({"streaming": {"n_tokens": 300}}).check_model(tiny_llama, "p")
    with pytest.raises(ParamError, match=r"p\.streaming\.n_tokens = 60: must exceed sink \+ window = 68"):
        SinksParams.coerce({"streaming": {"n_tokens": 60}}, where="p")
    SinksParams.coerce({"streaming": {"n_tokens": 300, "enabled": False}}).check_model(tiny_llama, "p")
    with pytest.raises(ParamError, match=r"p\.conditions = \[\]"):
        SinksParams.coerce({"conditions": []}, where="p")
    with pytest.raises(ParamError, match=r"p\.half = 200: 400 tokens \(2 × half\)"):
        TaxonomyParams(half=200).check_model(tiny_llama, "p")
    with pytest.raises(ParamError, match="needs a vision-language model.*tiny-llama is text-only"):
        VhdParams().check_model(tiny_llama, "p")


def test_sub_analysis_sizes_reach_their_functions(tiny_llama, monkeypatch):
    """``sinks.run`` no longer hard-codes the sub-analyses' sizes: each size set in params arrives."""
    from interp.analyses import extreme_tokens, hidden_sinks, secondary_sinks, sinks, streaming

    seen = {}

    def spy(name, real):
        def f(model, *a, **kw):
            seen[name] = kw
            return real(model, *a, **kw)
        return f

    for mod, fn in [(streaming, "streaming_scores"), (hidden_sinks, "hidden_sinks"),
                    (secondary_sinks, "secondary_sinks"), (extreme_tokens, "extreme_token_scores")]:
        monkeypatch.setattr(mod, fn, spy(fn, getattr(mod, fn)))
    out = sinks.run(tiny_llama, {"n_samples": 2, "n_tokens": 16, "conditions": ["prose"],
                                 "streaming": {"n_samples": 3, "n_tokens": 100, "window": 8, "sink": 2},
                                 "hidden": {"n_samples": 2, "n_tokens": 40, "min_rows": 4},
                                 "secondary": {"n_samples": 1, "n_tokens": 50, "start_layer": 1},
                                 "extreme": {"n_samples": 1, "n_tokens": 24}})
    assert seen["streaming_scores"] == dict(sink=2, window=8, tau=0.1, n_samples=3, n_tokens=100, seed=0)
    assert seen["hidden_sinks"] == dict(threshold=0.1, min_rows=4, n_samples=2, n_tokens=40, seed=0)
    assert seen["secondary_sinks"] == dict(threshold=0.1, start_layer=1, min_rows=16, n_samples=1, n_tokens=50,
                                           seed=0)
    assert seen["extreme_token_scores"] == dict(n_samples=1, n_tokens=24, seed=0)
    s = out["scores"]
    assert s.loc[s["score"] == "stream_outside", "n_samples"].iloc[0] == 3 * (100 - 2 - 8)
    assert (s.loc[s["score"] == "resid_peak", "level"] == "layer").all()
    seen.clear()
    out = sinks.run(tiny_llama, {"n_samples": 2, "n_tokens": 16, "conditions": ["prose"], "streaming": False,
                                 "hidden": False, "secondary": False, "extreme": False})
    assert not seen and set(out["scores"]["score"]) == {"sink_rate_prose", "sink_alpha_prose", "sink_frac_prose"}
