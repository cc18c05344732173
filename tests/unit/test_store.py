"""interp.collect / ActivationStore / interp.batching on tiny random models.

Reference for every check: ``run_with_cache`` on one prompt at a time, unpadded, reduced by hand in float64.
"""

from __future__ import annotations

import gc
import os

import pytest
import torch

from interp.batching import PromptDataset, iter_batches, pad_batch
from interp.hooks import run_with_cache
from interp.sites import Site
from interp.store import ActivationStore, collect
from interp.testing import tiny_model

PROMPTS = ["the cat sat on the mat", "hi", "a b a b a", "tokens!", "the the the cat"]
ATOL = 1e-5


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama", n_layers=2)


def single(model, prompts, sites):
    """Per prompt: {site: activation of that prompt alone, batch axis dropped}, and its token ids."""
    out = []
    for p in prompts:
        ids = torch.tensor([model.tokenizer.encode(p)])
        _, cache = run_with_cache(model, ids, sites)
        out.append(({s: v[0] for s, v in cache.items()}, ids[0]))
    return out


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_keep_all_matches_single_prompt_runs(family):
    model = tiny_model(family, n_layers=2)
    sites = [Site(0, "resid_post"), Site(1, "z"), Site(1, "pattern"), Site(0, "k"), Site(1, "q", 2),
             Site(1, "head_out"), Site(0, "logits")]
    store = collect(model, PROMPTS, sites, batch_size=2, progress=False)
    ref = single(model, PROMPTS, sites)
    n_max = max(len(ids) for _, ids in ref)
    for i, (cache, ids) in enumerate(ref):
        n = len(ids)
        assert store.mask[i].sum() == n and torch.equal(store.tokens[i, :n], ids)
        for s in sites:
            got = store[s][i]
            if s.component == "pattern":
                assert got.shape[1:] == (n_max, n_max)
                torch.testing.assert_close(got[:, :n, :n], cache[s], atol=ATOL, rtol=0)
                assert got[:, n:].abs().sum() == 0 and got[:, :, n:].abs().sum() == 0
            else:
                torch.testing.assert_close(got[:n], cache[s], atol=ATOL, rtol=0)
                assert got[n:].abs().sum() == 0  # unused slots are zero


def test_heads_positions_and_dtype(llama):
    store = collect(llama, PROMPTS, ["z", "v", "pattern"], layers=[1], heads=[3, 2], positions=[-1, 0],
                    batch_size=3, dtype=torch.float64, progress=False)
    sites = [Site(1, "z"), Site(1, "v"), Site(1, "pattern")]
    assert store.sites == sites and store.meta["dtype"] == "float64"
    for i, (cache, _ids) in enumerate(single(llama, PROMPTS, sites)):
        z = store["L1.z"][i]
        assert z.dtype == torch.float64 and z.shape == (2, 2, 8)
        torch.testing.assert_close(z.float(), cache[sites[0]][[-1, 0]][:, [3, 2]], atol=ATOL, rtol=0)
        torch.testing.assert_close(store[sites[1]][i].float(), cache[sites[1]][[-1, 0]][:, [1]],
                                   atol=ATOL, rtol=0)  # heads 3 and 2 both read KV head 1
        n = len(_ids)
        torch.testing.assert_close(store[sites[2]][i][:, :, :n].float(), cache[sites[2]][[3, 2]][:, [-1, 0]],
                                   atol=ATOL, rtol=0)


def test_slice_positions_are_left_aligned(llama):
    store = collect(llama, PROMPTS, [Site(0, "resid_post")], positions=slice(-3, None), batch_size=2,
                    progress=False)
    for i, (cache, ids) in enumerate(single(llama, PROMPTS, [Site(0, "resid_post")])):
        k = min(3, len(ids))
        assert store.mask[i].tolist() == [True] * k + [False] * (3 - k)
        torch.testing.assert_close(store["L0.resid_post"][i, :k], cache[Site(0, "resid_post")][-k:],
                                   atol=ATOL, rtol=0)


def test_mean_and_sum_match_dense_by_hand(llama):
    site = Site(1, "z")
    ref = single(llama, PROMPTS, [site])
    n_max = max(len(ids) for _, ids in ref)
    total = torch.zeros((n_max, 4, 8), dtype=torch.float64)
    count = torch.zeros(n_max, dtype=torch.long)
    for cache, ids in ref:
        total[: len(ids)] += cache[site].double()
        count[: len(ids)] += 1
    mean = collect(llama, PROMPTS, [site], reduce="mean", batch_size=2, progress=False)
    summ = collect(llama, PROMPTS, [site], reduce="sum", batch_size=3, progress=False)
    torch.testing.assert_close(mean[site].double(), total / count[:, None, None], atol=ATOL, rtol=0)
    torch.testing.assert_close(summ[site].double(), total, atol=ATOL, rtol=0)
    assert torch.equal(mean.counts(site), count) and count[-1] == 1


def test_mean_token_matches_groupby(llama):
    site = Site(0, "resid_mid")
    groups: dict[int, list] = {}
    for cache, ids in single(llama, PROMPTS, [site]):
        for t, vec in zip(ids.tolist(), cache[site], strict=True):
            groups.setdefault(t, []).append(vec.double())
    store = collect(llama, PROMPTS, [site], reduce="mean_token", batch_size=2, progress=False)
    got = store[site]
    assert sorted(got) == sorted(groups)
    for t, vecs in groups.items():
        torch.testing.assert_close(got[t].double(), torch.stack(vecs).mean(0), atol=ATOL, rtol=0)
        assert store.counts(site)[t] == len(vecs)
    ids, means, counts = store.token_means(site)
    assert ids.tolist() == sorted(groups) and means.shape == (len(groups), 32)


def test_topk_picks_largest_norm_examples(llama):
    site = Site(1, "attn_out")
    ref = single(llama, PROMPTS, [site])
    norms = torch.tensor([cache[site].double().norm().item() for cache, _ in ref])
    store = collect(llama, PROMPTS, [site], reduce=("topk", 2), batch_size=2, progress=False)
    want = norms.argsort(descending=True)[:2]
    assert store.topk_indices(site).tolist() == want.tolist()
    for j, i in enumerate(want.tolist()):
        n = len(ref[i][1])
        torch.testing.assert_close(store[site][j, :n], ref[i][0][site], atol=ATOL, rtol=0)


def _tmp_files(root):
    return [f for _, _, fs in os.walk(root) for f in fs if ".tmp" in f]


def test_spill_to_disk_gives_identical_tensors(llama, tmp_path):
    sites = ["z", "pattern", "resid_pre"]
    mem = collect(llama, PROMPTS, sites, batch_size=2, progress=False)
    disk = collect(llama, PROMPTS, sites, batch_size=2, memory_budget_mb=0.001, spill_dir=tmp_path / "spill",
                   progress=False)
    files = sorted((tmp_path / "spill").glob("*.safetensors"))
    assert len(files) >= 2 and not _tmp_files(tmp_path)
    assert disk.nbytes == mem.nbytes > 0
    for s in mem.sites:
        assert torch.equal(disk[s], mem[s])
    auto = collect(llama, PROMPTS, ["z"], batch_size=2, memory_budget_mb=0.0, progress=False)
    spill = auto.meta["spill_dir"]
    assert os.path.isdir(spill)
    torch.testing.assert_close(auto["L1.z"], mem["L1.z"], atol=ATOL, rtol=0)  # mem ran eager (pattern)
    del auto
    gc.collect()
    assert not os.path.exists(spill)  # the temporary spill folder goes with the store


@pytest.mark.parametrize("reduce", [None, "mean", "mean_token", ("topk", 2)])
def test_save_load_round_trip(llama, tmp_path, reduce):
    sites = ["z"] if reduce == "mean_token" else ["z", "pattern"]
    store = collect(llama, PROMPTS, sites, layers=[0], reduce=reduce, batch_size=2, progress=False)
    loaded = ActivationStore.load(store.save(tmp_path / "st"))
    assert not _tmp_files(tmp_path)
    assert loaded.sites == store.sites and loaded.reduce == store.reduce and loaded.n_examples == 5
    assert torch.equal(loaded.mask, store.mask)
    if reduce is not None:  # reduce=None is saved as one padded tensor per site, not per-batch chunks
        assert loaded.nbytes == store.nbytes
    for s in store.sites:
        a, b = store[s], loaded[s]
        if reduce == "mean_token":
            assert a.keys() == b.keys() and all(torch.equal(a[t], b[t]) for t in a)
        else:
            assert torch.equal(a, b)
    if reduce == ("topk", 2):
        assert torch.equal(loaded.topk_indices("L0.z"), store.topk_indices("L0.z"))


def test_clear_errors(llama):
    with pytest.raises(ValueError, match="dataset is empty"):
        collect(llama, [], ["z"], progress=False)
    with pytest.raises(ValueError, match="layer 5 out of range"):
        collect(llama, PROMPTS, [Site(5, "z")], progress=False)
    with pytest.raises(ValueError, match="layer 2 out of range"):
        collect(llama, PROMPTS, ["z"], layers=[2], progress=False)
    with pytest.raises(ValueError, match="head 4 out of range"):
        collect(llama, PROMPTS, [Site(0, "z", 4)], progress=False)
    with pytest.raises(ValueError, match="head 7 out of range"):
        collect(llama, PROMPTS, ["z"], heads=[7], progress=False)
    with pytest.raises(ValueError, match="longer than .* context of 256"):
        collect(llama, [[0] + [5] * 300], ["z"], progress=False)
    with pytest.raises(ValueError, match="unknown reduce 'median'"):
        collect(llama, PROMPTS, ["z"], reduce="median", progress=False)
    with pytest.raises(ValueError, match="unknown component 'zz'"):
        collect(llama, PROMPTS, ["zz"], progress=False)
    with pytest.raises(ValueError, match="position -4 is outside a prompt of 3 tokens"):
        collect(llama, ["hi"], ["z"], positions=-4, progress=False)
    store = collect(llama, PROMPTS, ["z"], layers=0, progress=False)
    with pytest.raises(KeyError, match="L1.z was not collected"):
        store["L1.z"]


def test_batching_helpers(llama):
    ids, mask = pad_batch(llama, ["abc", [0, 9]])
    assert ids.tolist() == [llama.tokenizer.encode("abc"), [1, 1, 0, 9]]  # pad id 1, left padding
    assert mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
    assert [list(b) for b in iter_batches(range(5), 2)] == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        list(iter_batches([1], 0))
    ds = PromptDataset(torch.tensor([[0, 3, 4], [0, 5, 6]]))
    assert len(ds) == 2 and ds[1] == [0, 5, 6]
    with pytest.raises(ValueError, match="dataset is empty"):
        PromptDataset(torch.zeros((0, 3), dtype=torch.long))
    with pytest.raises(ValueError, match="dataset is empty"):
        pad_batch(llama, [])
