"""Sahara: Safety Attention Head AttRibution Algorithm (Zhou et al., "On the Role of Attention Heads in Large
Language Model Safety", ICLR 2025; official code github ydyjya/SafetyHeadAttribution, ``lib/Sahara``).

Stack the final-layer (post final norm) hidden states at the last position of ``N`` harmful prompts
(template ``"## Query:{q}\\n## Answer:"``) into ``H ∈ R^{N × d_model}``, clean, and ``H̃_S`` with head set ``S``
ablated (query scaled by ``eps = 1e-5``, as the official ``scale_mask``). With ``U_r`` the top-``r`` left
singular vectors (``R^N``, as ``torch.linalg.svd(H).U[:, :r]`` in the official ``compute_subspace_similarity``)
and ``σ_i`` the singular values of ``U_r(H)ᵀ U_r(H̃_S)``, the principal angles are ``θ_i = arccos σ_i``
(degrees). The score of ``S`` is the largest principal angle (for the official ``r = 1`` the only one).

Greedy forward selection (official ``search_step`` loop): start from ``S = ∅``; at each step add the head
``c ∉ S`` maximising ``angle(H, H̃_{S ∪ {c}})``; stop at ``set_size`` heads. All candidates of a step are
evaluated in batched forwards (``interp.variants.run_variants``: one variant per candidate set over all prompts,
left padding).

Validated in ``tests/unit/test_safety_sahara.py``: the angle against hand-built subspaces with a known
principal angle, and the greedy selection against a brute-force reference (weight surgery, one prompt and one
candidate set at a time, float64 numpy SVD) on a tiny model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from interp.variants import run_variants, variants_per_chunk

from ._safety_data import check_heads, check_method, encode, left_pad, load_prompts, set_ablation
from .ships import ANALYSIS, all_heads


def principal_angles(a: torch.Tensor, b: torch.Tensor, r: int = 1) -> torch.Tensor:
    """Principal angles (degrees, ascending) between the spans of the top-``r`` left singular vectors of
    ``a`` and ``b`` (both ``[n_samples, d_model]``); returns ``[r]`` float64."""
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"expected two [n_samples, d_model] matrices of the same shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= min(a.shape):
        raise ValueError(f"r must be an int in [1, {min(a.shape)}] (at most n_samples and d_model), got {r!r}")
    u_a = torch.linalg.svd(a.double(), full_matrices=False).U[:, :r]
    u_b = torch.linalg.svd(b.double(), full_matrices=False).U[:, :r]
    sigma = torch.linalg.svdvals(u_a.T @ u_b)  # descending → angles ascending
    return torch.rad2deg(torch.acos(sigma.clamp(-1.0, 1.0)))


def subspace_angle(a: torch.Tensor, b: torch.Tensor, r: int = 1) -> float:
    """The Sahara score: the largest principal angle (degrees) between the rank-``r`` subspaces."""
    return float(principal_angles(a, b, r)[-1])


@torch.no_grad()
def hidden_for_sets(model, ids: torch.Tensor, mask: torch.Tensor, sets: Sequence[Sequence[tuple[int, int]]], *,
                    method: str = "scale", eps: float = 1e-5, memory_budget_mb: float = 1024) -> torch.Tensor:
    """``[set, prompt, d_model]`` float64 final-layer hidden states (after the final norm) at the last position
    of every prompt (``ids``/``mask [prompt, pos]``, left-padded) with each head set ablated: one
    ``run_variants`` variant per set; prompts are split into groups when one set's rows exceed the budget."""
    n = ids.shape[0]
    fit = variants_per_chunk(model, 1, ids.shape[1], memory_budget_mb, logits_to_keep=1, hidden_states=True)
    out = []
    for start in range(0, n, fit):
        g = slice(start, min(n, start + fit))
        variants = [set_ablation(model, heads, method=method, eps=eps, attention_mask=mask[g]) for heads in sets]
        out.append(run_variants(model, ids[g], variants, lambda o: o.hidden_states[-1][:, -1].double().cpu(),
                                attention_mask=mask[g], memory_budget_mb=memory_budget_mb, logits_to_keep=1,
                                hidden_states=True))
    return torch.cat(out, dim=1)


@dataclass
class SaharaResult:
    """Selected heads in order, the set's angle after each step, and every step's candidate angles
    ``step_angles [step, layer, head]`` (degrees; NaN for heads not evaluated at that step)."""

    heads: list[tuple[int, int]]
    angles: list[float]
    step_angles: torch.Tensor
    n_prompts: int
    r: int

    def scores(self, model_name: str):
        """Tidy rows: ``sahara_rank`` (1 = picked first) and ``sahara_angle`` (set angle after adding the head)
        for the selected heads, and ``sahara_single_angle`` (step-1 angle of every candidate head)."""
        from interp.scores import ScoreTable

        common = dict(model=model_name, analysis=ANALYSIS, n_samples=self.n_prompts)
        single = ScoreTable.from_matrix(self.step_angles[0], score="sahara_single_angle", **common)
        single = single[single["value"].notna()]
        return ScoreTable.concat([
            ScoreTable.from_heads(self.heads, range(1, len(self.heads) + 1), score="sahara_rank", **common),
            ScoreTable.from_heads(self.heads, self.angles, score="sahara_angle", **common), single])


def sahara(model, queries: str | Sequence[str] = "advbench", *, n: int | None = None, set_size: int = 3,
           r: int = 1, candidates: Sequence[tuple[int, int]] | None = None, method: str = "scale",
           eps: float = 1e-5, template: str = "paper", memory_budget_mb: float = 1024,
           progress: bool = False) -> SaharaResult:
    """Greedy Sahara head-set selection on ``queries`` (a built-in set name, a file or a list of requests).

    ``set_size``: heads to select; ``r``: subspace rank (official 1); ``candidates``: heads allowed (default
    all; restricting to the top Ships heads keeps big models tractable on a CPU).
    """
    check_method(method, eps)
    if isinstance(set_size, bool) or not isinstance(set_size, int) or set_size < 1:
        raise ValueError(f"set_size must be a positive int, got {set_size!r}")
    prompts = load_prompts(queries, n)
    if not 1 <= r <= len(prompts):
        raise ValueError(f"r = {r} needs at least r prompts; got {len(prompts)} prompts")
    pool = all_heads(model) if candidates is None else check_heads(model, candidates)
    pool = list(dict.fromkeys(pool))
    if set_size > len(pool):
        raise ValueError(f"set_size {set_size} exceeds the {len(pool)} candidate heads")
    ids, mask = left_pad(model, encode(model, prompts, template))
    clean = hidden_for_sets(model, ids, mask, [[]], method=method, eps=eps, memory_budget_mb=memory_budget_mb)[0]
    chosen: list[tuple[int, int]] = []
    angles: list[float] = []
    s = model.shape
    step_angles = torch.full((set_size, s.n_layers, s.n_heads), float("nan"), dtype=torch.float64)
    for step in range(set_size):
        todo = [c for c in pool if c not in chosen]
        hidden = hidden_for_sets(model, ids, mask, [chosen + [c] for c in todo], method=method, eps=eps,
                                 memory_budget_mb=memory_budget_mb)
        for (layer, head), h in zip(todo, hidden):
            step_angles[step, layer, head] = subspace_angle(clean, h, r)
        vals = torch.tensor([float(step_angles[step, layer, head]) for layer, head in todo])
        best = int(torch.argmax(vals))  # first maximum: lowest (layer, head) among ties
        chosen.append(todo[best])
        angles.append(float(vals[best]))
        if progress:
            print(f"sahara step {step + 1}/{set_size}: L{todo[best][0]}H{todo[best][1]} "
                  f"angle {angles[-1]:.3f}°", flush=True)
    return SaharaResult(heads=chosen, angles=angles, step_angles=step_angles, n_prompts=len(prompts), r=r)
