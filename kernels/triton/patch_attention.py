"""Triton NCP patch attention: one online softmax over null + context pages + own page (causal).

Same signature and semantics as `nuwa_fast.ops.reference.patch_attention` (the oracle, see its
docstring for shapes and layouts). Two launch modes share one kernel body:

- one pass: grid (cdiv(M, BLOCK_M), B*H, 1). A program owns BLOCK_M query rows of one (sample, head),
  walks null -> context slots c = 0..C-1 -> own page, and writes the normalised output.
- split over keys (flash-decoding, for decode when B*H leaves SMs idle): grid (.., B*H, S). The keys
  of a row are laid out flat: the valid context slots' pages back to back (n_valid * P keys, empty
  slots take no room), then the own page's visible keys. Split s takes the flat range
  [s*kps, (s+1)*kps), kps = cdiv(total, S) rounded up to BLOCK_N, so every split gets the same
  number of keys whatever the slots hold ("down" leaves 13 of 25 slots empty: splitting over slots
  would idle about half the programs). Split 0 also takes the null key. Each split writes its running
  max (log2 units), sum and unnormalised output [B*H, S, M, D] in fp32; `_reduce_kernel`
  (grid (M, B*H)) merges them. A split whose range is empty writes (-1e30, 0, 0).

Blocking: q tile [BLOCK_M, BLOCK_D] stays in registers; keys/values stream in [BLOCK_N, BLOCK_D]
chunks (BLOCK_N = power of two, the page tail P % BLOCK_N is masked at load time, so unused memory is
never read). BLOCK_M == 1 (decode) computes q.k and p.v as broadcast-multiply + sum on CUDA cores;
BLOCK_M >= 16 uses tl.dot (fp32 accumulate; "ieee" precision for fp32 inputs, operands upcast to fp32
in the interpreter where bf16 tl.dot is wrong). Scores are kept in log2 units: qk_scale = scale*log2(e)
and the ADC bias (read in-kernel from the [R, H] table, one scalar per slot) is multiplied by log2(e),
so the softmax uses exp2. Page offsets are computed in int64 (page * stride overflows int32 on big pools).

On a GPU the launch is autotuned per (M, P, head_dim, split) over a small space (`_configs`: 9 decode,
7 + 4 fp32 prefill) that `_prune` cuts by page size, M and the per-thread product; every config it can keep is
compiled for sm_80 and sm_90 in CI with zero spills (tests/test_kernel_resources.py). The first call
of a key runs the benchmark, so call once before capturing a CUDA graph. NUWA_FAST_TRITON_AUTOTUNE=0
takes the first kept config instead (the GPU tests). In the interpreter one fixed config runs.
`CHOSEN_CONFIGS` records what ran.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
# Filled after each launch: (mode, M, P, D, dtype) -> the config that ran (autotuned on a GPU, fixed
# in the interpreter). Benchmarks print it.
CHOSEN_CONFIGS: dict[tuple, dict] = {}


@triton.jit
def _qk(q, k, BLOCK_M: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    # q [BLOCK_M, BLOCK_D], k [BLOCK_N, BLOCK_D] -> scores [BLOCK_M, BLOCK_N] fp32
    if BLOCK_M == 1:
        s = tl.sum(q.to(tl.float32)[:, None, :] * k.to(tl.float32)[None, :, :], axis=2)
    elif UPCAST:
        s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
    elif IEEE:
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    return s


@triton.jit
def _pv(p, v, BLOCK_M: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    # p [BLOCK_M, BLOCK_N] fp32, v [BLOCK_N, BLOCK_D] -> [BLOCK_M, BLOCK_D] fp32
    if BLOCK_M == 1:
        o = tl.sum(p[:, :, None] * v.to(tl.float32)[None, :, :], axis=1)
    elif UPCAST:
        o = tl.dot(p, v.to(tl.float32), input_precision="ieee")
    elif IEEE:
        o = tl.dot(p, v, input_precision="ieee")
    else:
        o = tl.dot(p.to(v.dtype), v)                  # fp16/bf16 operands, fp32 accumulate
    return o


@triton.jit
def _online_update(m_i, l_i, acc, s, v, BLOCK_M: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    # s [BLOCK_M, BLOCK_N] log2-unit scores (-inf = masked); m_i is always finite (null key or -1e30)
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + _pv(p, v, BLOCK_M, UPCAST, IEEE)
    return m_new, l_i, acc


@triton.jit(do_not_specialize=["q_start", "own_rel", "SPLIT"])
def _patch_attn_kernel(
        Q, K, V, PT, OWN, BIAS, NK, NV, OUT, M_PART, L_PART, ACC_PART,
        q_start, M, P, C, H, own_rel, qk_scale,
        stride_qb, stride_qh, stride_qm, stride_qd,
        stride_kn, stride_kh, stride_kp, stride_kd,
        stride_vn, stride_vh, stride_vp, stride_vd,
        stride_ptb, stride_ptc, stride_br, stride_bh,
        stride_nkh, stride_nkd, stride_nvh, stride_nvd,
        stride_ob, stride_oh, stride_om, stride_od, SPLIT,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    split = tl.program_id(2)
    n_splits = tl.num_programs(2)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)                       # [BLOCK_M] patch rows - q_start
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < M
    d_mask = offs_d < HEAD_DIM
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                mask=m_mask[:, None] & d_mask[None, :], other=0.0)       # [BLOCK_M, BLOCK_D]

    # null key/value (bias 0) seeds the softmax of split 0, so a row is never empty
    nk = tl.load(NK + h * stride_nkh + offs_d * stride_nkd, mask=d_mask, other=0.0).to(tl.float32)
    nv = tl.load(NV + h * stride_nvh + offs_d * stride_nvd, mask=d_mask, other=0.0).to(tl.float32)
    s_null = tl.sum(q.to(tl.float32) * nk[None, :], axis=1) * qk_scale      # [BLOCK_M]
    first = split == 0
    m_i = tl.where(first, s_null, -1.0e30)
    l_i = tl.where(first, 1.0, 0.0) + tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.where(first, 1.0, 0.0) * nv[None, :] + tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # this program's share of the flat key range: valid slots' pages, then the own page's keys
    # 0 .. q_start+row_hi-2 (row m sees q_start+m of them; keys past the block's last visible one are
    # never loaded: not yet written, may hold NaN)
    pt_row = PT + b * stride_ptb
    offs_c = tl.arange(0, BLOCK_C)
    slots = tl.load(pt_row + offs_c * stride_ptc, mask=offs_c < C, other=-1)      # [BLOCK_C]
    n_valid = tl.sum((slots >= 0).to(tl.int32), axis=0)
    row_hi = tl.minimum(pid_m * BLOCK_M + BLOCK_M, M)
    n_own = q_start + row_hi - 1
    own_start = n_valid * P
    total = own_start + n_own
    kps = ((total + n_splits - 1) // n_splits + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    lo = split * kps
    hi = tl.minimum(lo + kps, total)

    # context slots: full pages, slot bias added to every score; empty slots take no keys
    j = 0                                                                  # valid slots before c
    for c in range(0, C):
        slot = tl.load(pt_row + c * stride_ptc)
        start = j * P
        a = tl.maximum(lo - start, 0)
        e = tl.where(slot >= 0, tl.minimum(hi - start, P), 0)
        j += (slot >= 0).to(tl.int32)
        page = tl.maximum(slot, 0).to(tl.int64)
        k_base = K + page * stride_kn + h * stride_kh
        v_base = V + page * stride_vn + h * stride_vh
        bias_c = tl.load(BIAS + c * stride_br + h * stride_bh).to(tl.float32) * 1.4426950408889634
        for n0 in range(a, e, BLOCK_N):
            offs = n0 + offs_n
            kv_mask = (offs < e)[:, None] & d_mask[None, :]
            k = tl.load(k_base + offs[:, None] * stride_kp + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
            v = tl.load(v_base + offs[:, None] * stride_vp + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)
            s = _qk(q, k, BLOCK_M, UPCAST, IEEE) * qk_scale + bias_c
            s = tl.where((offs < e)[None, :], s, float("-inf"))
            m_i, l_i, acc = _online_update(m_i, l_i, acc, s, v, BLOCK_M, UPCAST, IEEE)

    # own page: causal, row m sees keys 0 .. q_start+m-1
    own = tl.load(OWN + b).to(tl.int64)
    k_base = K + own * stride_kn + h * stride_kh
    v_base = V + own * stride_vn + h * stride_vh
    bias_o = tl.load(BIAS + own_rel * stride_br + h * stride_bh).to(tl.float32) * 1.4426950408889634
    a = tl.maximum(lo - own_start, 0)
    e = tl.minimum(hi - own_start, n_own)
    for n0 in range(a, e, BLOCK_N):
        offs = n0 + offs_n
        kv_mask = (offs < e)[:, None] & d_mask[None, :]
        k = tl.load(k_base + offs[:, None] * stride_kp + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs[:, None] * stride_vp + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)
        s = _qk(q, k, BLOCK_M, UPCAST, IEEE) * qk_scale + bias_o
        s = tl.where((offs[None, :] < (q_start + offs_m)[:, None]) & (offs < e)[None, :], s, float("-inf"))
        m_i, l_i, acc = _online_update(m_i, l_i, acc, s, v, BLOCK_M, UPCAST, IEEE)

    if SPLIT != 0:                    # a runtime flag: split and one-pass launches share one binary
        row = (pid_bh * n_splits + split).to(tl.int64) * M + offs_m        # [BLOCK_M] rows of [B*H, S, M]
        tl.store(M_PART + row, m_i, mask=m_mask)
        tl.store(L_PART + row, l_i, mask=m_mask)
        tl.store(ACC_PART + row[:, None] * HEAD_DIM + offs_d[None, :], acc,
                 mask=m_mask[:, None] & d_mask[None, :])
    else:
        out = acc / l_i[:, None]
        tl.store(OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
                 out.to(OUT.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


@triton.jit
def _reduce_kernel(M_PART, L_PART, ACC_PART, OUT, M, H, n_splits,
                   stride_ob, stride_oh, stride_om, stride_od,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
    # one program per (row m, sample*head): merge S partial softmaxes
    m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_mask = offs_s < n_splits
    d_mask = offs_d < HEAD_DIM
    row = (pid_bh * n_splits + offs_s).to(tl.int64) * M + m                # [BLOCK_S]
    m_s = tl.load(M_PART + row, mask=s_mask, other=-1.0e30)
    l_s = tl.load(L_PART + row, mask=s_mask, other=0.0)
    acc = tl.load(ACC_PART + row[:, None] * HEAD_DIM + offs_d[None, :], mask=s_mask[:, None] & d_mask[None, :],
                  other=0.0)                                                # [BLOCK_S, BLOCK_D]
    g = tl.max(m_s, axis=0)                                                 # finite: split 0 holds the null key
    w = tl.exp2(m_s - g)
    out = tl.sum(w[:, None] * acc, axis=0) / tl.sum(w * l_s, axis=0)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    tl.store(OUT + b * stride_ob + h * stride_oh + m * stride_om + offs_d * stride_od,
             out.to(OUT.dtype.element_ty), mask=d_mask)


# fp32 (IEEE) prefill tiles: the fp32 tl.dot runs on FMA units and holds 2x the registers of a 16-bit
# tile, so the 16-bit prefill tiles spill there (sm_80, D = 64: 64x64 at 4 warps 27 KB of spill stores,
# 16x16 at 4 warps 32 B); fp32 gets small tiles on more warps instead
_FP32_PREFILL = [(16, 16, 4, 2), (16, 16, 8, 2), (32, 16, 8, 2), (32, 32, 8, 2)]
_PREFILL = [(16, 16, 4, 3), (32, 32, 4, 3), (64, 32, 4, 3), (64, 64, 4, 2), (64, 64, 4, 3), (128, 32, 8, 3),
            (128, 64, 8, 2)]


def _configs(decode: bool):
    """The autotune space, kept small: every config costs a compile and a benchmark on the first call of
    a key, and every one `_prune` can keep is compiled for sm_80 and sm_90 in CI
    (benchmarks/kernel_resources.py, tests/test_kernel_resources.py)."""
    if decode:   # bandwidth-bound: BLOCK_M = 1 on CUDA cores, or a 16-row tl.dot tile (15 rows masked)
        return ([triton.Config({"BLOCK_M": 1, "BLOCK_N": n}, num_warps=w, num_stages=s)
                 for n, w, s in [(16, 2, 2), (32, 2, 2), (32, 4, 2), (32, 4, 3), (64, 4, 2), (64, 8, 2),
                                 (128, 8, 2)]]
                + [triton.Config({"BLOCK_M": 16, "BLOCK_N": n}, num_warps=4, num_stages=3) for n in (32, 64)])
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m, n, w, s in _PREFILL + _FP32_PREFILL]


# Configs that spill (ptxas -v, Triton 3.9, on sm_80 or sm_90; rows of benchmarks/results/
# kernel_resources.json, re-measured by tests/test_kernel_resources.py, which fails when a config
# _prune keeps spills or an entry here does not): (mode, fp32, BLOCK_D) -> {(BLOCK_M, BLOCK_N, warps, stages)}
SPILLS = {
    ("decode", False, 128): {(16, 64, 4, 3)},
    ("prefill", False, 32): {(32, 32, 4, 3)},
    ("prefill", False, 128): {(32, 32, 4, 3), (64, 32, 4, 3), (64, 64, 4, 2), (64, 64, 4, 3), (128, 32, 8, 3),
                              (128, 64, 8, 2)},
    ("prefill", True, 32): {(16, 16, 8, 2)},
    ("prefill", True, 64): {(32, 16, 8, 2)},
    ("prefill", True, 128): {(16, 16, 4, 2), (16, 16, 8, 2), (32, 32, 8, 2)},
}


def config_key(c) -> tuple:
    return (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)


def _prune(configs, named_args, **kwargs):
    """No chunk wider than the page, no row tile much taller than M; BLOCK_M = 1: the [BLOCK_N, BLOCK_D]
    product at <= 32 fp32 per thread; fp32: BLOCK_M = 1 decode (the 16-row dot tile spills at D = 32)
    and the _FP32_PREFILL tiles, 16-bit: the others; never a config measured to spill (SPILLS)."""
    P, M, block_d = named_args["P"], named_args["M"], kwargs["BLOCK_D"]
    fp32 = kwargs.get("IEEE", False)
    spills = SPILLS.get(("decode" if M == 1 else "prefill", fp32, block_d), ())
    out = [c for c in configs
           if c.kwargs["BLOCK_N"] <= max(16, triton.next_power_of_2(P))
           and c.kwargs["BLOCK_M"] <= max(16, triton.next_power_of_2(M))
           and (c.kwargs["BLOCK_M"] > 1 or c.kwargs["BLOCK_N"] * block_d <= 32 * 32 * c.num_warps)
           and (c.kwargs["BLOCK_M"] == 1 or (config_key(c) in _FP32_PREFILL) == fp32)
           and config_key(c) not in spills]
    return out or configs[:1]


def _fixed_config(decode: bool, P: int, M: int, block_d: int, fp32: bool):
    """The first config the pruning keeps (configs are listed small to large)."""
    return _prune(_configs(decode), dict(P=P, M=M), BLOCK_D=block_d, IEEE=fp32)[0]


_TUNED = {
    decode: triton.autotune(_configs(decode), key=["M", "P", "HEAD_DIM", "SPLIT"],
                            prune_configs_by={"early_config_prune": _prune})(_patch_attn_kernel)
    for decode in (True, False)
}


def default_splits(B, H, M, C, P, device) -> int:
    """Flash-decoding splits for decode-sized M when B*H programs leave SMs idle: about two programs
    per SM, at most 32 splits and at least 128 keys of the fullest possible row per split."""
    if device.type != "cuda" or M > 16:
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    if B * H >= sms:
        return 1
    return max(1, min(32, triton.cdiv(2 * sms, B * H), triton.cdiv((C + 1) * P, 128)))


def patch_attention(q, k_cache, v_cache, page_table, own_page, q_start, bias, own_rel, null_k, null_v,
                    scale, num_splits=None):
    """Triton backend of `nuwa_fast.ops.reference.patch_attention` (same arguments and result).

    num_splits: None = heuristic (split the flat key range for decode when B*H < SM count), else forced.
    """
    B, H, M, D = q.shape
    N, Hk, P, Dk = k_cache.shape
    C = page_table.shape[1]
    assert (Hk, Dk) == (H, D) and v_cache.shape == k_cache.shape, \
        f"k/v cache {tuple(k_cache.shape)}/{tuple(v_cache.shape)} do not match q {tuple(q.shape)}"
    assert k_cache.dtype == q.dtype and v_cache.dtype == q.dtype, "q, k_cache, v_cache must share a dtype"
    assert q.dtype in (torch.float32, torch.float16, torch.bfloat16), f"unsupported dtype {q.dtype}"
    assert M >= 1 and 0 <= q_start and q_start + M - 1 <= P, f"rows q_start={q_start}, M={M} exceed P={P}"
    assert page_table.shape[0] == B and own_page.shape[0] == B, "page_table/own_page batch != q batch"
    assert B * H < 65536, f"B*H = {B * H} exceeds the CUDA grid's y limit (65535); launch in chunks of samples"
    assert bias.shape[0] >= max(C, own_rel + 1) and bias.shape[1] == H, \
        f"bias {tuple(bias.shape)} needs >= max(C={C}, own_rel+1={own_rel + 1}) rows and H={H} columns"

    interpret = q.device.type == "cpu"                                     # TRITON_INTERPRET=1
    # the interpreter casts fp32 -> bf16 by truncation (GPUs round to nearest even): write fp32 there
    # and let torch round
    out_dtype = torch.float32 if interpret and q.dtype == torch.bfloat16 else q.dtype
    out = torch.empty((B, H, M, D), device=q.device, dtype=out_dtype)
    S = num_splits if num_splits is not None else default_splits(B, H, M, C, P, q.device)
    S = max(1, int(S))
    split = S > 1
    if split:
        m_part = torch.empty((B * H, S, M), device=q.device, dtype=torch.float32)
        l_part = torch.empty_like(m_part)
        acc_part = torch.empty((B * H, S, M, D), device=q.device, dtype=torch.float32)
    else:
        m_part = l_part = acc_part = out                                   # unused

    block_d = max(16, triton.next_power_of_2(D))
    decode = M == 1
    args = (q, k_cache, v_cache, page_table, own_page, bias, null_k, null_v, out, m_part, l_part, acc_part,
            int(q_start), M, P, C, H, int(own_rel), float(scale) * LOG2E,
            *q.stride(), *k_cache.stride(), *v_cache.stride(), *page_table.stride(), *bias.stride(),
            *null_k.stride(), *null_v.stride(), *out.stride(), int(split))
    consts = dict(HEAD_DIM=D, BLOCK_D=block_d, BLOCK_C=triton.next_power_of_2(max(C, 1)), UPCAST=interpret,
                  IEEE=q.dtype == torch.float32)
    if interpret:   # one fixed config: autotuning in the interpreter only costs time
        cfg = {"BLOCK_M": 1 if decode else 16, "BLOCK_N": min(32, max(16, triton.next_power_of_2(P)))}
        _patch_attn_kernel[(triton.cdiv(M, cfg["BLOCK_M"]), B * H, S)](*args, **consts, **cfg)
        chosen = dict(cfg, num_warps=None, num_stages=None)
    elif os.environ.get("NUWA_FAST_TRITON_AUTOTUNE", "1") == "0":
        # fixed, non-spilling configs (benchmarks/results/kernel_resources.json): GPU tests check
        # correctness over many shapes, where autotuning each key would cost minutes of compiles
        cfg = _fixed_config(decode, P, M, block_d, q.dtype == torch.float32)
        _patch_attn_kernel[(triton.cdiv(M, cfg.kwargs["BLOCK_M"]), B * H, S)](
            *args, **consts, **cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        chosen = dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    else:
        tuned = _TUNED[decode]
        tuned[lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), B * H, S)](*args, **consts)
        best = tuned.best_config
        chosen = dict(best.kwargs, num_warps=best.num_warps, num_stages=best.num_stages)
    CHOSEN_CONFIGS[("decode" if decode else "prefill", M, P, D, str(q.dtype).replace("torch.", ""))] = \
        dict(chosen, num_splits=S)

    if split:
        _reduce_kernel[(M, B * H)](m_part, l_part, acc_part, out, M, H, S, *out.stride(),
                                   HEAD_DIM=D, BLOCK_D=block_d, BLOCK_S=triton.next_power_of_2(S))
    return out.to(q.dtype)
