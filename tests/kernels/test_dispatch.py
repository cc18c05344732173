"""The dispatcher's decisions as a table (device × dtype × stats × mask × env), its errors, the compile-failure
fallback, and that compute_attention_stats really runs what the plan says."""

import pytest
import torch
from _attn_helpers import make_inputs

from interp.kernels.attention_stats import compute_attention_stats, dispatch, fused_cpu, run_plan
from interp.kernels.attention_stats._spec import validate
from interp.kernels.attention_stats.dispatch import ENV, Caps, Plan, Request, plan

F16, BF16, F32, F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
ROW = frozenset({"entropy", "argmax"})
TOPK = frozenset({"topk", "entropy"})
CPU_OK = Caps()  # fused C kernel loads, flash CPU op present
NO_CC = Caps(fused_cpu_error="fused CPU kernel unavailable: no C compiler found")
H100 = Caps(cuda_capability=(9, 0))
T4 = Caps(cuda_capability=(7, 5))
NO_TRITON = Caps(cuda_capability=(9, 0), triton_error="ModuleNotFoundError: No module named 'triton'")
H100_FLASH = Caps(cuda_capability=(9, 0), flash_cuda_lse=True)

SQUARE = dict(query_pos=16, key_pos=16)
DECODE = dict(query_pos=1, key_pos=16)
FWD = dict(want_output=True, lse_wanted=True)  # a StatsCapture inside a forward, no padding

# (device, dtype, stats, request extras, caps, env, impl, forward, fallback, warning substring)
TABLE = [
    # --- CPU, auto ----------------------------------------------------------------------------------------------
    ("cpu", F32, ROW, dict(SQUARE, **FWD), CPU_OK, {}, "fused", "fused", None, None),
    ("cpu", F32, ROW, dict(SQUARE, lse_wanted=True), CPU_OK, {}, "fused", "flash_cpu", None, None),
    ("cpu", F32, ROW, dict(SQUARE), CPU_OK, {}, "fused", "sdpa", None, None),
    ("cpu", BF16, ROW, dict(SQUARE, **FWD), CPU_OK, {}, "fused", "fused", None, None),
    ("cpu", BF16, ROW, dict(SQUARE, lse_wanted=True), CPU_OK, {}, "fused", "sdpa", None, None),  # flash: fp32/64
    ("cpu", F64, ROW, dict(SQUARE, **FWD), CPU_OK, {}, "chunked", "flash_cpu", None, None),
    ("cpu", F32, TOPK, dict(SQUARE, **FWD), CPU_OK, {}, "chunked", "flash_cpu", None, None),
    ("cpu", F32, ROW, dict(SQUARE, **FWD), NO_CC, {}, "chunked", "flash_cpu", None, None),
    ("cpu", F32, ROW, dict(SQUARE, **FWD), Caps(flash_cpu_lse=False, fused_cpu_error="x"), {}, "chunked", "sdpa",
     None, None),
    # masks, padding, softcap, pattern hooks, KV cache, window
    ("cpu", F32, ROW, dict(SQUARE, padding=True, **FWD), CPU_OK, {}, "fused", "sdpa", None, None),
    ("cpu", F32, ROW, dict(SQUARE, attention_mask=True, **FWD), CPU_OK, {}, "fused", "sdpa", None, None),
    ("cpu", F32, ROW, dict(SQUARE, softcap=30.0, **FWD), CPU_OK, {}, "fused", "eager", None, None),
    ("cpu", F32, ROW, dict(SQUARE, pattern=True, **FWD), CPU_OK, {}, "fused", "eager", None, None),
    ("cpu", F32, ROW, dict(DECODE, **FWD), CPU_OK, {}, "fused", "fused", None, None),
    ("cpu", F64, ROW, dict(DECODE, **FWD), CPU_OK, {}, "chunked", "sdpa", None, None),  # flash: square only
    ("cpu", F64, ROW, dict(SQUARE, window=8, **FWD), CPU_OK, {}, "chunked", "sdpa", None, None),
    ("cpu", F64, ROW, dict(SQUARE, window=16, **FWD), CPU_OK, {}, "chunked", "flash_cpu", None, None),
    ("cpu", F64, ROW, dict(SQUARE, row_lse=True, **FWD), CPU_OK, {}, "chunked", "sdpa", None, None),
    # no statistics: the output from SDPA (eager with a pattern hook or softcap)
    ("cpu", F32, frozenset(), dict(SQUARE, **FWD), CPU_OK, {}, None, "sdpa", None, None),
    ("cpu", F32, frozenset(), dict(SQUARE, pattern=True), CPU_OK, {}, None, "eager", None, None),
    # --- CPU, environment -----------------------------------------------------------------------------------------
    ("cpu", F32, ROW, dict(SQUARE, **FWD), CPU_OK, {ENV: "chunked"}, "chunked", "flash_cpu", None, None),
    ("cpu", F32, ROW, dict(SQUARE, **FWD), CPU_OK, {ENV: "reference"}, "reference", "sdpa", None, None),
    ("cpu", F32, ROW, dict(SQUARE, **FWD), CPU_OK, {ENV: "auto"}, "fused", "fused", None, None),
    ("cpu", F32, ROW, dict(SQUARE, impl="chunked", **FWD), CPU_OK, {ENV: "fused"}, "chunked", "flash_cpu", None,
     None),  # an explicit impl wins over the variable
    ("cpu", F32, ROW, dict(SQUARE, impl="fused", **FWD), CPU_OK, {}, "fused", "fused", None, None),
    ("cpu", F32, ROW, dict(SQUARE, impl="reference", **FWD), CPU_OK, {}, "reference", "sdpa", None, None),
    ("cpu", F32, ROW, dict(SQUARE, impl="triton", **FWD), Caps(triton_interpret=True), {}, "triton", "flash_cpu",
     None, None),
    # --- CUDA, auto -----------------------------------------------------------------------------------------------
    ("cuda", BF16, ROW, dict(SQUARE, **FWD), H100, {}, "triton", "sdpa", "chunked", None),
    ("cuda", F16, ROW, dict(SQUARE, **FWD), T4, {}, "triton", "sdpa", "chunked", None),
    ("cuda", F32, TOPK, dict(SQUARE, **FWD), H100, {}, "triton", "sdpa", "chunked", None),
    ("cuda", BF16, ROW, dict(SQUARE, **FWD), T4, {}, "chunked", "sdpa", None, "sm75"),
    ("cuda:1", F16, ROW, dict(SQUARE, **FWD), NO_TRITON, {}, "chunked", "sdpa", None, "triton is not importable"),
    ("cuda", F64, ROW, dict(SQUARE, **FWD), H100, {}, "chunked", "sdpa", None, None),
    # the CUDA flash forward with LSE, once switched on: fp16/bf16, sm80+, square, no mask
    ("cuda", BF16, ROW, dict(SQUARE, **FWD), H100_FLASH, {}, "triton", "flash_cuda", "chunked", None),
    ("cuda", F32, ROW, dict(SQUARE, **FWD), H100_FLASH, {}, "triton", "sdpa", "chunked", None),
    ("cuda", BF16, ROW, dict(SQUARE, padding=True, **FWD), H100_FLASH, {}, "triton", "sdpa", "chunked", None),
    ("cuda", BF16, ROW, dict(DECODE, **FWD), H100_FLASH, {}, "triton", "sdpa", "chunked", None),
    ("cuda", F16, ROW, dict(SQUARE, **FWD), Caps(cuda_capability=(7, 5), flash_cuda_lse=True), {}, "triton",
     "sdpa", "chunked", None),
    # --- CUDA, environment / explicit -----------------------------------------------------------------------------
    ("cuda", BF16, ROW, dict(SQUARE, **FWD), H100, {ENV: "chunked"}, "chunked", "sdpa", None, None),
    ("cuda", BF16, ROW, dict(SQUARE, impl="triton", **FWD), H100, {}, "triton", "sdpa", None, None),
    # --- other devices ----------------------------------------------------------------------------------------------
    ("mps", F16, ROW, dict(SQUARE, **FWD), Caps(), {}, "chunked", "sdpa", None, None),
]


@pytest.mark.parametrize("device,dtype,stats,extra,caps,env,impl,forward,fallback,warn", TABLE,
                         ids=[f"{i}-{r[0]}-{str(r[1])[6:]}-{r[6]}-{r[7]}" for i, r in enumerate(TABLE)])
def test_decision_table(device, dtype, stats, extra, caps, env, impl, forward, fallback, warn):
    p = plan(Request(device, dtype, stats=stats, **extra), caps, env)
    assert (p.impl, p.forward, p.fallback) == (impl, forward, fallback), p.reason
    if warn is None:
        assert p.warning is None
    else:
        assert warn in p.warning and "\n" not in p.warning and "chunked" in p.warning
    assert p.fused_output == (forward == "fused") and p.lse_forward == forward.startswith("flash")


ERRORS = [
    (dict(device="cuda", impl="fused"), H100, {}, ValueError, "impl='fused' is the CPU path"),
    (dict(stats=TOPK, impl="fused"), CPU_OK, {}, ValueError, "does not compute \\['topk'\\]"),
    (dict(dtype=F64, impl="fused"), CPU_OK, {}, ValueError, "float64"),
    (dict(impl="fused"), NO_CC, {}, RuntimeError, "no C compiler"),
    (dict(device="cuda"), H100, {ENV: "fused"}, ValueError, "INTERP_ATTN_IMPL='fused' is the CPU path"),
    (dict(impl="triton"), CPU_OK, {}, ValueError, "TRITON_INTERPRET=1"),
    (dict(dtype=BF16, impl="triton"), Caps(triton_interpret=True), {}, ValueError, "not bfloat16"),
    (dict(device="cuda", impl="triton"), NO_TRITON, {}, ValueError, "triton is not importable"),
    (dict(device="cuda", dtype=BF16, impl="triton"), T4, {}, ValueError, "need sm80\\+ \\(this GPU is sm75\\)"),
    (dict(impl="cuda"), CPU_OK, {}, ValueError, "impl must be one of \\['auto', 'reference', 'chunked'"),
    (dict(), CPU_OK, {ENV: "fast"}, ValueError, "INTERP_ATTN_IMPL='fast' is not an implementation"),
]


@pytest.mark.parametrize("kw,caps,env,exc,match", ERRORS, ids=[str(i) for i in range(len(ERRORS))])
def test_explicit_impls_that_cannot_run_say_why(kw, caps, env, exc, match):
    kw = dict(dict(device="cpu", dtype=F32, stats=ROW, **SQUARE), **kw)
    with pytest.raises(exc, match=match):
        plan(Request(**kw), caps, env)


def test_check_impl_reads_the_environment(monkeypatch):
    dispatch.check_impl("chunked")
    monkeypatch.setenv(ENV, "gpu")
    with pytest.raises(ValueError, match="INTERP_ATTN_IMPL='gpu'.*one of"):
        dispatch.check_impl("auto")


def test_request_of_tensors():
    q, k = torch.zeros(2, 6, 3, 8, dtype=F16), torch.zeros(2, 2, 7, 8, dtype=F16)
    r = Request.of(q, k, stats=ROW)
    assert (r.device, r.dtype, r.query_pos, r.key_pos, r.kind) == ("cpu", F16, 3, 7, "cpu")
    assert Request.of(q, k.double()).dtype == F64 and Request.of(q.float(), k.bfloat16()).dtype == BF16


def test_live_probe_matches_the_fused_kernel():
    p = plan(Request("cpu", F32, 8, 8, stats=ROW, want_output=True))
    assert p.impl == ("fused" if fused_cpu.available() else "chunked")


# --- compute_attention_stats runs what the plan says ----------------------------------------------------------------
def _spy(monkeypatch, name):
    import interp.kernels.attention_stats as ast

    calls, real = [], ast._KERNELS[name]
    monkeypatch.setitem(ast._KERNELS, name, lambda *a: calls.append(name) or real(*a))
    return calls


@pytest.mark.parametrize("env,want", [(None, "auto"), ("chunked", "chunked"), ("reference", "reference")])
def test_environment_forces_the_path_and_numbers_agree(monkeypatch, env, want):
    q, k, _, _ = make_inputs(1, 4, 2, 24, 24, 16, seed=2)
    calls = {n: _spy(monkeypatch, n) for n in ("reference", "chunked", "fused")}
    if env:
        monkeypatch.setenv(ENV, env)
    out = compute_attention_stats(q, k, stats=["entropy", "col_alpha"], scale=0.25)
    ran = [n for n, c in calls.items() if c]
    expect = ("fused" if fused_cpu.available() else "chunked") if want == "auto" else want
    assert ran == [expect]
    ref = compute_attention_stats(q.double(), k.double(), stats=["entropy", "col_alpha"], scale=0.25,
                                  impl="reference")
    for name in ref:
        torch.testing.assert_close(out[name].double(), ref[name], rtol=1e-5, atol=1e-5)


def test_value_gives_the_output_only_on_the_fused_path():
    if not fused_cpu.available():
        pytest.skip("no C compiler")
    q, k, _, _ = make_inputs(1, 4, 2, 20, 20, 16, seed=4)
    v = torch.randn_like(k)
    out, st = compute_attention_stats(q, k, stats=["entropy"], scale=0.25, value=v)
    scores = (q.double() @ k.double().repeat_interleave(2, 1).transpose(-1, -2)) * 0.25
    scores = scores.masked_fill(~torch.ones(20, 20, dtype=torch.bool).tril(), float("-inf"))
    want = torch.softmax(scores, -1) @ v.double().repeat_interleave(2, 1)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="only on the fused CPU path"):
        compute_attention_stats(q.double(), k.double(), stats=["entropy"], scale=0.25, value=v.double())
    with pytest.raises(ValueError, match="only on the fused CPU path"):
        compute_attention_stats(q, k, stats=["entropy"], scale=0.25, value=v, softcap=5.0)


def test_compile_failure_falls_back_to_chunked_with_one_warning(monkeypatch):
    from triton.runtime.errors import OutOfResources

    import interp.kernels.attention_stats as ast

    def boom(*a):
        raise OutOfResources(300000, 232448, "shared memory")

    monkeypatch.setitem(ast._KERNELS, "triton", boom)
    q, k, _, _ = make_inputs(1, 2, 1, 12, 12, 16, seed=3)
    spec = validate(q, k, stats=["entropy", "argmax"], scale=0.25)
    with pytest.warns(RuntimeWarning, match="triton kernel failed to compile .*OutOfResources.*chunked path") as w:
        out = run_plan(Plan("triton", fallback="chunked"), q, k, spec)
    assert len(w) == 1 and "\n" not in str(w[0].message)
    ref = compute_attention_stats(q, k, stats=["entropy", "argmax"], scale=0.25, impl="chunked")
    assert torch.equal(out["argmax"], ref["argmax"]) and torch.equal(out["entropy"], ref["entropy"])
    # no fallback in the plan (an explicit impl): the failure is raised, not hidden
    with pytest.raises(OutOfResources):
        run_plan(Plan("triton"), q, k, spec)
    # a bug that is not a compile failure is never swallowed by the fallback
    monkeypatch.setitem(ast._KERNELS, "triton", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        run_plan(Plan("triton", fallback="chunked"), q, k, spec)


def test_auto_warning_is_emitted(monkeypatch):
    import interp.kernels.attention_stats as ast

    monkeypatch.setattr(ast, "plan", lambda req: Plan("chunked", warning="attention statistics: why; using the "
                                                                          "chunked path"))
    q, k, _, _ = make_inputs(1, 2, 1, 8, 8, 16, seed=1)
    with pytest.warns(RuntimeWarning, match="why; using the chunked path"):
        compute_attention_stats(q, k, stats=["lse"], scale=0.25)
