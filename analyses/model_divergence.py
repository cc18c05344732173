"""Model-vs-model head divergence: the same inputs through two models of one architecture.

Model B may be a second model (another quantisation, a fine-tune) or model A under interventions (e.g. some
heads ablated). Per head (l, h), over positions t of the input:

    output distance   d_t = ‖o^A_t − o^B_t‖₂ / ‖o^A_t‖₂,  o_t = z_t W_O^h        (mean over t)
    DLA difference    DLA^X = (o^X_T / rms(r^X_T)) ⊙ γ · (W_U[a] − W_U[b])          (last position T)
                      reported as DLA^B − DLA^A, with the final RMSNorm's scale frozen from each run's own
                      final residual r_T (γ = the final norm's weight; for Gemma the norm is 1 + weight);
    pattern JS        JS(A^A_i·, A^B_i·) per query row (natural log), mean over rows, computed by
                      ``interp.kernels.attention_stats.divergence`` from both runs' post-RoPE q, k: neither
                      n×n pattern is built, so it runs at the full context.

Validated in tests/unit/test_model_divergence.py against dense float64 computations from the cached patterns
and head outputs on short inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interp.arch import head_outputs
from interp.capture import Capture
from interp.params import ParamError, Params, check_context, param
from interp.scores import ScoreTable
from interp.sites import Site, parse_head


class _QKCapture(Capture):
    """Attention capture (``interp.capture.Capture``) that keeps (or compares against) each layer's post-RoPE
    q, k during a forward. It does not call the statistics engine (``stats`` stays empty), so the output always
    comes from SDPA."""

    def __init__(self, layers, reference=None, divergences=("js",)):
        super().__init__()
        self._layers = layers
        self.reference = reference
        self.divergences = divergences
        self.qk: dict[int, tuple] = {}
        self.div: dict[int, dict] = {}

    def layers(self, model):
        return self._layers

    def capture(self, layer, module, query, key, attention_mask, *, scaling, softcap, window, row_lse=None):
        from interp.kernels.attention_stats.divergence import pattern_divergence

        if self.reference is None:
            self.qk[layer] = (query.detach(), key.detach(), scaling, window)
            return
        q1, k1, s1, w1 = self.reference.qk.pop(layer)
        self.div[layer] = pattern_divergence(q1, k1, query.detach(), key.detach(), scale1=s1, scale2=scaling,
                                             stats=self.divergences, window=window if window == w1 else None)


def _head_outputs_and_resid(model, ids, z_positions):
    s = model.shape
    kept, final = {}, {}

    def keep(z, site):
        kept[site.layer] = z[0, z_positions].detach().float()

    def keep_resid(x, site):
        final["r"] = x[0, -1].detach().float()

    hooks = {Site(layer, "z"): keep for layer in range(s.n_layers)}
    hooks[Site(s.n_layers - 1, "resid_post")] = keep_resid
    return hooks, kept, final


def _final_norm_scale(model, resid_last):
    """Vector g such that final_norm(r) = g ⊙ r at this position (RMSNorm, scale frozen)."""
    norm = model.arch.final_norm
    with torch.no_grad():
        out = norm(resid_last[None, None].to(model.dtype))[0, 0].float()
    return out / resid_last.where(resid_last.abs() > 1e-12, torch.full_like(resid_last, 1e-12))


@torch.no_grad()
def model_divergence(model_a, ids: torch.Tensor, *, model_b=None, interventions_b=(), answer: int | None = None,
                     wrong: int | None = None, js: bool = True):
    """Compare two runs head by head on ids [1, pos].

    Returns a score table (analysis "model_divergence"; scores ``output_rel_l2``, ``dla_diff`` when
    ``answer``/``wrong`` token ids are given, ``pattern_js``).
    """
    if ids.ndim != 2 or ids.shape[0] != 1:
        raise ValueError(f"model_divergence takes one sequence ids [1, pos], got shape {tuple(ids.shape)}")
    model_b = model_b or model_a
    if model_b.shape.asdict() != model_a.shape.asdict():
        raise ValueError(f"models differ in shape: {model_a.shape} vs {model_b.shape}; compare models of one "
                         "architecture")
    s = model_a.shape
    layers = list(range(s.n_layers))
    positions = torch.arange(ids.shape[1])
    cap_a = _QKCapture(layers) if js else None
    hooks, za, fa = _head_outputs_and_resid(model_a, ids, positions)
    with model_a.hooks(hooks, capture=cap_a):
        model_a.forward(ids)
    cap_b = _QKCapture(layers, reference=cap_a) if js else None
    hooks, zb, fb = _head_outputs_and_resid(model_b, ids, positions)
    ctx = model_b.intervene(*interventions_b) if interventions_b else _null()
    with ctx, model_b.hooks(hooks, capture=cap_b):
        model_b.forward(ids)
    out_rel = torch.zeros(s.n_layers, s.n_heads)
    dla = torch.zeros(s.n_layers, s.n_heads)
    want_dla = answer is not None and wrong is not None
    if want_dla:
        w_u = model_a.arch.lm_head.weight.float()
        direction_a = w_u[answer] - w_u[wrong]
        direction_b = model_b.arch.lm_head.weight.float()[answer] - model_b.arch.lm_head.weight.float()[wrong]
        ga, gb = _final_norm_scale(model_a, fa["r"]), _final_norm_scale(model_b, fb["r"])
    for layer in layers:
        oa = head_outputs(za[layer], model_a.w_o(layer, torch.float32))  # [pos, head, d_model]
        ob = head_outputs(zb[layer], model_b.w_o(layer, torch.float32))
        out_rel[layer] = ((oa - ob).norm(dim=-1) / oa.norm(dim=-1).clamp_min(1e-12)).mean(0)
        if want_dla:
            dla[layer] = (ob[-1] * gb) @ direction_b - (oa[-1] * ga) @ direction_a
    tables = [ScoreTable.from_matrix(out_rel, model=model_a.name, analysis="model_divergence",
                                     score="output_rel_l2", n_samples=1)]
    if want_dla:
        tables.append(ScoreTable.from_matrix(dla, model=model_a.name, analysis="model_divergence",
                                             score="dla_diff", n_samples=1))
    if js:
        m = torch.stack([cap_b.div[layer]["js"][0].double().mean(-1) for layer in layers])
        tables.append(ScoreTable.from_matrix(m, model=model_a.name, analysis="model_divergence",
                                             score="pattern_js", n_samples=1))
    return ScoreTable.concat(tables)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# --- the report entry ("model_divergence" in interp.analyses.registry) ------------------------------------------
@dataclass(frozen=True)
class ModelDivergenceParams(Params):
    """Parameters of ``model_divergence``: model A is the report's model; model B is ``model_b`` (a second
    model of the same architecture) or, when ``model_b`` is empty, model A with the heads of ``ablate`` zeroed."""

    model_b: str = param("", "second model: a model name, folder or .gguf (empty: model A itself, with ablate)")
    ablate: tuple[str, ...] = param((), "heads zero-ablated in model B, as L{layer}H{head}")
    domain: str = param("prose", "input text", choices=("prose", "code", "random", "repeated"))
    n_tokens: int = param(128, "tokens of the input", ge=2)
    seed: int = param(0, "sampling seed of the input", ge=0)
    js: bool = param(True, "also compute the per-head attention Jensen-Shannon divergence")

    def check(self, where):
        if not self.model_b.strip() and not self.ablate:
            raise ParamError(f"{where}.model_b = '': model_divergence compares two runs; set model_b to a second "
                             f"model (e.g. --param model_divergence.model_b=tiny-llama) or {where}.ablate to heads "
                             "zeroed in the second run (e.g. [\"L3H5\"])")
        for h in self.ablate:
            try:
                parse_head(h)
            except ValueError:
                raise ParamError(f"{where}.ablate = {list(self.ablate)}: cannot read {h!r}; write heads as "
                                 "L{layer}H{head}, e.g. L3H5") from None

    def check_model(self, model, where=""):
        check_context(model, f"{where}.n_tokens", self.n_tokens)
        if self.model_b.strip() and not _spec_exists(self.model_b.strip()):
            raise ParamError(f"{where}.model_b = {self.model_b!r}: no such model here (not a packaged or tiny "
                             "model, a local folder, a .gguf file or in the HF cache); see `interp models`")
        s = model.shape
        for h in self.ablate:
            layer, head = parse_head(h)
            if layer >= s.n_layers or head >= s.n_heads:
                raise ParamError(f"{where}.ablate: {h} is outside {model.name} ({s.n_layers} layers × "
                                 f"{s.n_heads} heads)")


def _spec_exists(spec: str) -> bool:
    """Whether ``load_model(spec)`` can find weights, without loading them."""
    import os
    from pathlib import Path

    from interp.model import _in_hf_cache
    from interp.registry import resolve_packaged
    from interp.tiny import FAMILIES

    if spec.startswith("tiny-"):
        return spec[len("tiny-"):] in FAMILIES
    return (resolve_packaged(spec) is not None or Path(os.path.expanduser(spec)).exists()
            or _in_hf_cache(spec))


def run(model, params: ModelDivergenceParams | dict | None = None, out_dir=None) -> dict:
    """Report entry: every head of the report's model against ``model_b`` (or itself with ``ablate`` zeroed)
    on one ``n_tokens`` sample of ``domain``."""
    from interp.analyses._text import domain_samples
    from interp.interventions import Zero

    p = ModelDivergenceParams.coerce(params, where="model_divergence")
    model_b = None
    if p.model_b.strip():
        from interp import load_model

        model_b = load_model(p.model_b.strip(), dtype=model.dtype, device=str(model.device))
    ids = domain_samples(model, p.domain, 1, p.n_tokens, seed=p.seed)
    ablate = [Zero(Site(layer, "z", head)) for layer, head in map(parse_head, p.ablate)]
    return {"scores": model_divergence(model, ids, model_b=model_b, interventions_b=ablate, js=p.js)}
