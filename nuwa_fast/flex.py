"""FlexKernel: the static step's buffer read by torch.nn.attention.flex_attention ("flex").

Page-aligned blocks [context pages | own page | null page] (nuwa_fast.gathered): context pages are
"full" blocks (mask_mod skipped; a page's tail past P is masked by the -inf bias that score_mod adds
there), the own page is causal in mask_mod, the null page holds the null key in its first position.
Compiled on CUDA, eager on a CPU (what a PyTorch user would write instead; the benchmarks compare).
"""
from __future__ import annotations

import math
import warnings

import torch

from .gathered import MatmulKernel

_FLEX = None


def _compiled_flex():
    global _FLEX
    if _FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention
        _FLEX = torch.compile(flex_attention, dynamic=False)
    return _FLEX


class FlexKernel(MatmulKernel):
    name = "flex"
    block = 16                     # the smallest key block FlexAttention's kernels take
    null_positions = 16            # the null key fills one page block, so blocks stay aligned
    causal_in_bias = False         # the own page is causal in mask_mod
    QB = 128                       # query block

    def setup(self, step):
        from torch.nn.attention.flex_attention import flex_attention
        sh, dev, P, R = step.sh, step.sh.dev, step.sh.P, step.sh.R
        own_off, null_off, row_t, Ntot = step.own_off, step.null_off, sh.row_t, step.Ntot
        self.step = step
        self.key_ok = torch.zeros(R, Ntot, dtype=torch.bool, device=dev)   # per row: context keys + null key
        self.key_ok[:, null_off] = True
        key_ok = self.key_ok

        def mask_dec(b, h, q_idx, kv_idx):
            own = (kv_idx >= own_off) & (kv_idx < null_off)
            return torch.where(own, kv_idx - own_off < row_t, key_ok[b, kv_idx])

        def mask_pre(b, h, q_idx, kv_idx):                       # query q_idx is row q_idx + 1
            own = (kv_idx >= own_off) & (kv_idx < null_off)
            return torch.where(own, kv_idx - own_off <= q_idx, key_ok[b, kv_idx])

        def score_mod_for(kb):
            return lambda score, b, h, q_idx, kv_idx: score + kb[b, h, kv_idx]

        self._mask_mods = (mask_dec, mask_pre)
        self.score_mods = [score_mod_for(step.kbias[l]) for l in range(sh.L)]
        self.n_q = {True: 1, False: math.ceil(P / self.QB)}
        self.full_num = torch.zeros(R, 1, 1, dtype=torch.int32, device=dev)        # valid context pages per row
        self.full_num_p = torch.zeros(R, 1, self.n_q[False], dtype=torch.int32, device=dev)
        self._bms: dict = {}
        if dev.type == "cuda":
            self._flex = _compiled_flex()
        else:
            warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
            self._flex = flex_attention

    def on_gather(self, step, valid, nr: int):
        n, P, Pb = step.n_max, step.sh.P, step.Pb
        self.key_ok[:nr, :step.nc].unflatten(1, (n, Pb))[..., :P].copy_(valid[..., None].expand(nr, n, P))
        self.full_num[:nr].copy_(valid.sum(1).view(nr, 1, 1))
        self.full_num_p[:nr].copy_(self.full_num[:nr].expand(nr, 1, self.full_num_p.shape[2]))

    def __call__(self, step, l, q, K, V, mask, decode: bool):
        bm = self._block_masks(q.shape[0])[0 if decode else 1]
        return self._flex(q, K, V, score_mod=self.score_mods[l], block_mask=bm, scale=step.scale)

    def _block_masks(self, nr: int):
        """(decode, prefill) block masks over the first nr rows, built once per row count."""
        if nr not in self._bms:
            from torch.nn.attention.flex_attention import BlockMask
            st = self.step
            dev, P, nb = st.sh.dev, st.sh.P, st.n_max + 2
            bms = []
            for decode in (True, False):
                nq = self.n_q[decode]
                full_idx = torch.arange(nb, dtype=torch.int32, device=dev).expand(nr, 1, nq, nb).contiguous()
                part_idx = torch.zeros(nr, 1, nq, nb, dtype=torch.int32, device=dev)
                part_idx[..., 0], part_idx[..., 1] = nb - 2, nb - 1                    # own page, null page
                bms.append(BlockMask.from_kv_blocks(
                    torch.full((nr, 1, nq), 2, dtype=torch.int32, device=dev), part_idx,
                    self.full_num[:nr] if decode else self.full_num_p[:nr], full_idx,
                    BLOCK_SIZE=(self.QB, st.Pb), mask_mod=self._mask_mods[0 if decode else 1],
                    seq_lengths=(1 if decode else P, st.Ntot), compute_q_blocks=False))
            self._bms[nr] = tuple(bms)
        return self._bms[nr]
