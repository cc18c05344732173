"""VHD / T-VHD / VHR mechanics on a tiny random LLaVA (no LVLM weights exist offline)."""

import pytest
import torch

from interp.analyses.vhd import VHR, select_heads, text_only, vhd_scores
from interp.model import Model
from interp.scores import ScoreTable
from interp.sites import Site
from interp.testing import CharTokenizer

IMG = 63


@pytest.fixture(scope="module")
def llava():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vc = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                          image_size=8, patch_size=4, projection_dim=16)
    tc = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128)
    cfg = LlavaConfig(vision_config=vc, text_config=tc, image_token_index=IMG, image_seq_length=4,
                      vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(0)
    hf = LlavaForConditionalGeneration(cfg).eval()
    return Model(hf, CharTokenizer(64), name="tiny-llava")


def _inputs():
    ids = torch.tensor([[0, 7, IMG, IMG, IMG, IMG, 5, 6, 7, 8]])
    return ids, torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def test_vhd_equals_explicit_head_output_difference(llava):
    ids, pv = _inputs()
    scores, per_token = vhd_scores(llava, ids, pv, n_generate=3, top_k=3)
    n_gen = int(per_token["is_generated"].sum())  # greedy decoding may stop early at EOS
    assert n_gen >= 1
    gen = per_token["token_id"].tolist()[-n_gen:]
    with_ids = torch.cat([ids, torch.tensor([gen])], 1)
    without = torch.cat([text_only(llava, ids), torch.tensor([gen])], 1)
    assert without.shape[1] == with_ids.shape[1] - 4
    sites = [Site(layer, "head_out") for layer in range(2)]
    cache_a, cache_b = {}, {}
    with torch.no_grad():
        with llava.hooks({s: (lambda x, s, c=cache_a: c.__setitem__(s, x.clone())) for s in sites}):
            llava.forward(with_ids, pixel_values=pv)
        with llava.hooks({s: (lambda x, s, c=cache_b: c.__setitem__(s, x.clone())) for s in sites}):
            llava.forward(without)
    T = 4 + n_gen  # 4 text tokens after the image + the generated ones
    vhd = torch.stack([(cache_a[s][0, -T:] - cache_b[s][0, -T:]).norm(dim=-1) for s in sites])  # [L, T, H]
    expect = vhd[:, -n_gen:].mean(1)
    got = torch.tensor(ScoreTable.matrix(scores, "vhd", 2, 4)).float()
    torch.testing.assert_close(got, expect, atol=1e-5, rtol=1e-4)
    t_vhd = vhd.permute(1, 0, 2).reshape(T, -1).topk(3, -1).values.mean(-1)
    torch.testing.assert_close(torch.tensor(per_token["t_vhd"].to_numpy()).float(), t_vhd, atol=1e-5, rtol=1e-4)
    assert float(vhd.max()) > 0  # the image matters somewhere


def test_select_heads_rule_by_hand():
    v = torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0])  # 100 is an outlier (> mean + std); median of rest = 2.5
    assert select_heads(v).tolist() == [False, False, True, True, False]


def test_vhr_alpha_one_is_identity_and_alpha_two_scales_selected_heads(llava):
    ids, pv = _inputs()
    with torch.no_grad():
        plain = llava.hf.generate(input_ids=ids, pixel_values=pv, max_new_tokens=4, do_sample=False)
        with VHR(alpha=1.0).apply(llava, ids):
            same = llava.hf.generate(input_ids=ids, pixel_values=pv, max_new_tokens=4, do_sample=False)
    assert torch.equal(plain, same)
    # layer 0 is not affected by earlier reinforcement: check its selection and scaling by hand
    sites = [Site(0, "z")]
    za, zb = {}, {}
    with torch.no_grad():
        with llava.hooks({sites[0]: lambda x, s: za.__setitem__("z", x.clone())}):
            llava.forward(ids, pixel_values=pv)
        with llava.hooks({sites[0]: lambda x, s: zb.__setitem__("z", x.clone())}):
            llava.forward(text_only(llava, ids))
    w_o = llava.arch.attn(0).o_proj.weight.view(32, 4, 8)
    vhd = torch.einsum("hd,mhd->hm", za["z"][0, -1] - zb["z"][0, -1], w_o).norm(dim=-1)
    sel = select_heads(vhd)
    seen = {}
    with torch.no_grad(), VHR(alpha=2.0, layers=(0,)).apply(llava, ids) as chosen:
        with llava.hooks({sites[0]: lambda x, s: seen.__setitem__("z", x.clone())}):
            llava.forward(ids, pixel_values=pv)
    assert chosen[0] == (0, sel.nonzero().flatten().tolist())
    expect = za["z"][0, -1].clone()
    expect[sel] *= 2
    torch.testing.assert_close(seen["z"][0, -1], expect, atol=1e-6, rtol=1e-5)
    assert VHR.from_json(VHR(alpha=3.0, layers=(1,)).to_json()) == VHR(alpha=3.0, layers=(1,))


def test_vhd_errors(llava):
    with pytest.raises(ValueError, match="no image token"):
        text_only(llava, torch.tensor([[0, 1, 2]]))
    from interp.testing import tiny_model

    with pytest.raises(ValueError, match="vision-language"):
        text_only(tiny_model("llama"), torch.tensor([[0, 1, 2]]))
