"""Triton ADC bias gather: the dense [B, H, C] form of the bias that patch_attention fuses.

Same signature as `nuwa_fast.ops.reference.adc_gather`. Grid (B,): a program writes one sample's
[H, C] fp32 tile, bias[c, h] where page_table[b, c] >= 0, else -inf.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _adc_gather_kernel(BIAS, PT, OUT, H, C, stride_br, stride_bh, stride_ptb, stride_ptc,
                       BLOCK_H: tl.constexpr, BLOCK_C: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    offs_h = tl.arange(0, BLOCK_H)
    offs_c = tl.arange(0, BLOCK_C)
    mask = (offs_h < H)[:, None] & (offs_c < C)[None, :]                    # [BLOCK_H, BLOCK_C]
    slot = tl.load(PT + b * stride_ptb + offs_c * stride_ptc, mask=offs_c < C, other=-1)
    bv = tl.load(BIAS + offs_c[None, :] * stride_br + offs_h[:, None] * stride_bh, mask=mask, other=0.0)
    out = tl.where(slot[None, :] >= 0, bv.to(tl.float32), float("-inf"))
    tl.store(OUT + (b * H + offs_h[:, None]) * C + offs_c[None, :], out, mask=mask)


def adc_gather(bias, page_table):
    """Triton backend of `nuwa_fast.ops.reference.adc_gather`: [B, H, C] fp32, -inf for empty slots."""
    B, C = page_table.shape
    H = bias.shape[1]
    assert bias.shape[0] >= C, f"bias has {bias.shape[0]} rows, page_table has C={C} slots"
    out = torch.empty((B, H, C), device=page_table.device, dtype=torch.float32)
    if B == 0 or C == 0:
        return out
    _adc_gather_kernel[(B,)](bias, page_table, out, H, C, *bias.stride(), *page_table.stride(),
                             BLOCK_H=triton.next_power_of_2(H), BLOCK_C=triton.next_power_of_2(C))
    return out
