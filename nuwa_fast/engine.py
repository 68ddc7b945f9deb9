"""The engine: one loop of waves for all five tasks.

A wave is every patch whose selected context is complete (ncp.plan, schedule="waves"; "sequential"
is one patch per wave, the reference). For each wave the scheduler (nuwa_fast.scheduler) selects the
context pages of every lane (lane = sample x patch), allocates their own pages (add), prefills the
given lanes in one pass and decodes the P+1 rows of the others in one batched step (rows whose
token is known are forced), then frees the pages no later wave needs (remove). Tokens do not depend
on the schedule: every lane sees its sequential context and the sampler's noise is keyed by (seed,
sample, patch index in the order, row). B samples (2B with classifier-free guidance) per lane.

Everything the loop touches lives in static buffers allocated before the loop (nuwa_fast.steps), so
the per-row decode step and the prefill of a given patch are fixed-shape functions of device
tensors: on CUDA each is captured once as a CUDA graph and replayed (cuda_graphs=True), on the CPU
the same code runs eagerly (or through torch.compile with compile_step=True). Sampling is the
hash-based Gumbel draw of nuwa_fast.sampling; the loop never waits for the host.

Attention modes (where a row's self-attention reads its context):
  "paged"     ops.patch_attention straight on the pool for every row: the fused kernels' path
              (triton/cuda); one CUDA graph per row index, since the kernels take q_start as an int.
  "gathered"  the selected context pages are copied out of the pool once per patch into a static
              [null | context | own] key/value buffer, then every row is a dense matmul-softmax-
              matmul over it (the torch backend's fast path); the row index is a device tensor, so
              one CUDA graph serves all rows.
  "sdpa"      the same gathered buffer + F.scaled_dot_product_attention with an additive float mask.
  "flex"      the same buffer in page-aligned blocks + torch.nn.attention.flex_attention with a
              block mask and a score_mod reading the ADC bias (compiled on CUDA, eager on a CPU).
  "fused"     (CPU) the same gathered buffer, but the whole decode row (every layer, the head) is one
              C++ call (csrc/cpu/row_step.cpp, built on first use by nuwa_fast.cpu_ext): the torch
              backend's default on a CPU with float32 weights when it builds, else "gathered".
"sdpa" and "flex" are what a PyTorch user would write instead; the benchmarks compare them.
The torch modes run the model's own layers; a mode is only the `kv` source of their NCPAttention
(layers.PagedKV for "paged"; gathered.GatheredKV with a kernel strategy of gathered.kernels() for
"gathered", "sdpa", "flex"), picked once in prepare(). "fused" reads the same weights in C++.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import torch

from . import adc, ncp, ops
from .scheduler import PatchKind, Scheduler

ATTENTION_MODES = ("paged", "gathered", "sdpa", "flex", "fused")
SCHEDULES = ncp.SCHEDULES


@dataclass
class TaskSpec:
    """What to generate, in tokens. Built by nuwa_fast.api for each task."""
    grid: tuple                          # (T, Hg, Wg) patch grid
    order: list                          # [(t, y, x)]
    prompts: list                        # [B] str ("" = unconditional)
    known: np.ndarray | None = None      # [T, Hg*p, Wg*p] int64 tokens, same for every sample
    known_mask: np.ndarray | None = None  # [T, Hg*p, Wg*p] bool
    extent: tuple | None = None          # None = the checkpoint's extent
    directions: list | None = None       # [len(order)] index in model.DIRECTIONS of each step's order
                                         # (layout conditioning); None = "down" for every step

    @property
    def batch(self) -> int:
        return len(self.prompts)


@dataclass
class Stats:
    """What a generation did. Sizes are per run; `pages` are logical (each holds B samples' pages)."""
    patches: int = 0                     # patches run (max_patches applied)
    tokens: int = 0                      # tokens per sample (known ones included)
    generated_tokens: int = 0            # sampled tokens, all samples
    seconds: float = 0.0
    peak_pages: int = 0                  # most pages in use at once (the device counter)
    pool_bytes: int = 0
    backend: str = "torch"
    schedule: str = "waves"
    waves: int = 0                       # batched steps run (= patches when sequential)
    mean_lanes: float = 0.0              # patches per wave
    attention: str = ""                  # the attention mode that ran ("oracle": dense, no pool)
    cuda_graphs: bool = False            # the steps were replayed from CUDA graphs
    compiled: bool = False               # the row step ran through torch.compile
    max_lanes: int = 0                   # lanes the static buffers hold
    patches_total: int = 0               # patches of the whole order
    plan_peak_pages: int = 0             # the plan's peak (peak_pages never exceeds it)
    pages_left: int = 0                  # pages still in use at the end (0: every page was freed)
    staging_bytes: int = 0               # the gathered modes' static key/value buffers
    capture_seconds: float = 0.0         # warm-up and CUDA-graph capture before the loop
    seed: int | None = None              # the sampler's seed (set by the tasks)
    wave_seconds: list | None = None     # patch_times=True: wall time of every wave
    patch_seconds: list | None = None    # patch_times=True: per patch of the order, its wave's time

    EXTRA = ("pages_left", "plan_peak_pages", "attention", "cuda_graphs", "compiled", "staging_bytes",
             "capture_seconds", "patches_total", "max_lanes", "seed", "wave_seconds", "patch_seconds")

    @property
    def extra(self) -> dict:
        """The fields that an earlier Stats kept in a dict, by name (a copy: set the fields)."""
        return {k: getattr(self, k) for k in self.EXTRA if getattr(self, k) is not None}

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0


def patch_known(spec: TaskSpec, tyx, p: int):
    """Known tokens and mask [P] of one patch (numpy), or (None, None) if nothing is known."""
    if spec.known_mask is None:
        return None, None
    t, y, x = tyx
    m = spec.known_mask[t, y * p:(y + 1) * p, x * p:(x + 1) * p].reshape(-1)
    if not m.any():
        return None, None
    return spec.known[t, y * p:(y + 1) * p, x * p:(x + 1) * p].reshape(-1), m


def check_extent(model, extent):
    extent = tuple(int(e) for e in (extent or model.cfg.extent))
    if len(extent) != 3 or min(extent) < 0:
        raise ValueError(f"extent must be three non-negative ints (e_t, e_h, e_w), got {extent}")
    adc.bias_rows(extent, model.cfg.extent)          # raises if it does not fit the checkpoint
    return extent


def validate_spec(model, spec: TaskSpec):
    p = model.cfg.patch
    if spec.batch < 1:
        raise ValueError("batch must be >= 1")
    T, Hg, Wg = spec.grid
    if spec.known is not None:
        want = (T, Hg * p, Wg * p)
        if spec.known.shape != want or spec.known_mask.shape != want:
            raise ValueError(f"known tokens must have shape {want}, got {spec.known.shape}")
        V = model.cfg.vq.codebook_size
        k = spec.known[spec.known_mask]
        if k.size and (k.min() < 0 or k.max() >= V):
            raise ValueError(f"known tokens must lie in [0, {V}) for this checkpoint's codebook")


def grid_extent(extent, grid):
    """The extent clipped to the grid, so no slot is always empty."""
    T, Hg, Wg = grid
    return (min(extent[0], T - 1), min(extent[1], Hg - 1), min(extent[2], Wg - 1))


def check_fits(model, grid, order, batch: int, extent=None, sampling=None, pool_dtype=None,
               schedule: str = "waves", max_lanes: int | None = None) -> int:
    """Raise ncp.PoolTooLarge (naming the pages needed) if this request's pool cannot be allocated.

    Needs only the grid and the order, so callers run it before any expensive work (encoding a
    source image); prepare() checks again when it allocates. Returns the pool's bytes.
    """
    e = grid_extent(check_extent(model, extent), grid)
    cfg = model.cfg
    Bt = batch * (2 if sampling is not None and sampling.guidance != 1.0 else 1)
    ncp.check_schedule(schedule, max_lanes)
    dtype = ncp.default_pool_dtype(model.decoder.start.dtype, model.device, pool_dtype)
    if schedule == "waves" and max_lanes is None:     # the default cap comes from the memory
        max_lanes = default_lanes(model, order, e, grid, Bt, dtype)
    return ncp.check_pool_fits(ncp.plan(order, e, grid, schedule, max_lanes).peak_pages, Bt, cfg, dtype,
                               model.device)


def default_lanes(model, order, extent, grid, Bt: int, dtype, share: float = 0.5) -> int:
    """The widest wave, halved until the pool of the waves plan plus the per-lane staging buffers fit
    in `share` of the memory a pool may use (ncp.available_bytes)."""
    cfg = model.cfg
    page = ncp.page_bytes(cfg, dtype)
    # per lane and sample: the gathered [context | own | null] K/V of every layer + its fp32 bias row
    ctx = adc.num_offsets(extent) * cfg.P + cfg.P + 1
    lane = Bt * (page // cfg.P * ctx + cfg.layers * cfg.heads * ctx * 4)
    budget = share * ncp.available_bytes(model.device)
    cap = ncp.plan(order, extent, grid, "waves").max_lanes
    while cap > 1 and ncp.plan(order, extent, grid, "waves", cap).peak_pages * Bt * page + cap * lane > budget:
        cap //= 2
    return max(cap, 1)


def _known_tables(spec: TaskSpec, p: int, n: int):
    """Per step of the order: known tokens and mask [n, P+1] (column P: scratch), and the PatchKind
    of each step."""
    P = p * p
    kinds = np.zeros(n, dtype=np.int8)
    if spec.known_mask is None:
        return None, None, kinds
    known = np.zeros((n, P + 1), dtype=np.int64)
    mask = np.zeros((n, P + 1), dtype=bool)
    for i, tyx in enumerate(spec.order[:n]):
        k, m = patch_known(spec, tyx, p)
        if m is not None:
            known[i, :P], mask[i, :P] = k, m
            kinds[i] = PatchKind.GIVEN if m.all() else PatchKind.PARTLY_KNOWN
    return known, mask, kinds


@dataclass
class Prepared:
    """Everything a run sets up before its patch loop (engine.prepare); benchmarks drive it directly."""
    sh: object                           # steps.Shared: pool, tables, static buffers
    step: object                         # steps.PagedStep | gathered.StaticStep
    rows: object                         # steps.GraphedStep: row(s, nb) / prefill(nb), eager or graphs
    scheduler: Scheduler                 # the waves and their NCP cycle
    kinds: np.ndarray                    # [n] int8 PatchKind per step
    known_mask: np.ndarray | None        # [n, P+1] bool
    n: int                               # steps to run (max_patches applied)
    attention: str
    backend: str
    graphs: bool
    capture_seconds: float


@torch.no_grad()
def default_attention(model, backend: str, compile_step: bool = False) -> str:
    """The backend's declared mode (ops.default_attention); for the torch backend on a CPU with float32
    weights, "fused" when the CPU row step builds (and torch.compile was not asked for)."""
    from . import cpu_ext
    from .gathered import fused_unsupported
    mode = ops.default_attention(backend)
    if (backend == "torch" and mode == "gathered" and not compile_step
            and fused_unsupported(model.decoder, model.device) is None and cpu_ext.available()
            and fused_unsupported(model.decoder, model.device, cpu_ext.load()) is None):
        return "fused"
    return mode


def prepare(model, spec: TaskSpec, seed: int = 0, sampling=None, backend=None, pool_dtype=None,
            attention: str | None = None, cuda_graphs: bool | None = None, compile_step: bool = False,
            max_patches: int | None = None, schedule: str = "waves", max_lanes: int | None = None,
            lane_buckets: bool | None = None) -> Prepared:
    """Check the arguments, plan, allocate every buffer and (on CUDA) capture the graphs.
    lane_buckets: round each group's lanes up to a bucket (bucket_sizes), padding the rest, as the
    captured graphs need (default: with graphs only)."""
    from .sampling import Sampling
    from .gathered import FusedStep, StaticStep
    from .steps import GraphedStep, PagedStep, Shared

    sampling = sampling or Sampling()
    ncp.check_schedule(schedule, max_lanes)
    validate_spec(model, spec)
    dev = model.device
    extent = check_extent(model, spec.extent)
    backend = ops.resolve_backend(backend, dev)
    attention = attention or default_attention(model, backend, compile_step)
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
    n_all = len(spec.order)
    try:
        bad = isinstance(max_patches, bool) or (max_patches is not None and
                                                (int(max_patches) != max_patches or max_patches < 0))
    except (TypeError, ValueError):
        bad = True
    if bad:
        raise ValueError(f"max_patches must be a whole number >= 0, got {max_patches!r}")
    n = n_all if max_patches is None else min(int(max_patches), n_all)
    graphs = dev.type == "cuda" and (cuda_graphs is None or bool(cuda_graphs))
    extent = grid_extent(extent, spec.grid)

    # host-side preparation: the only host -> device copies of the run
    Bt = spec.batch * (2 if sampling.guidance != 1.0 else 1)
    if schedule == "waves" and max_lanes is None:
        max_lanes = default_lanes(model, spec.order, extent, spec.grid, Bt,
                                  ncp.default_pool_dtype(model.decoder.start.dtype, dev, pool_dtype))
    plan = ncp.plan(spec.order, extent, spec.grid, schedule, max_lanes)
    known, kmask, kinds = _known_tables(spec, model.cfg.patch, n)
    buckets = graphs if lane_buckets is None else bool(lane_buckets)
    sh = Shared(model, spec, plan, extent, sampling, seed, backend, pool_dtype, known, kmask, n,
                lanes=plan.max_lanes, spare_lane=buckets)
    if attention == "paged":
        step = PagedStep(sh)
    elif attention == "fused":
        step = FusedStep(sh)
    else:
        step = StaticStep(sh, attention, compile_step=compile_step)
    rows = GraphedStep(step, graphs)
    sched = Scheduler(sh, step, rows, plan, kinds, n, buckets=buckets)
    capture_s = rows.prepare(prefill_buckets=sched.buckets("prefill"), decode_buckets=sched.buckets("decode"))
    return Prepared(sh, step, rows, sched, kinds, kmask, n, attention, backend, graphs, capture_s)


@torch.no_grad()
def run(model, spec: TaskSpec, seed: int = 0, sampling=None, backend=None, progress: bool = False,
        pool_dtype=None, attention: str | None = None, cuda_graphs: bool | None = None,
        compile_step: bool = False, max_patches: int | None = None, sync_debug: str | None = None,
        patch_times: bool = False, schedule: str = "waves", max_lanes: int | None = None, on_patch=None):
    """Generate the tokens of `spec`. Returns (tokens [B, T, Hg*p, Wg*p] int64, Stats).

    schedule      "waves" (every patch whose context is complete at once) | "sequential" (one patch
                  per step, the reference). Same tokens either way.
    max_lanes     most patches decoded at once (waves); default: the widest wave that fits in half
                  of the memory a pool may use.
    attention     "paged" | "gathered" | "sdpa" | "flex" | "fused" (module docstring). Default: the backend's
                  (default_attention: fused on a CPU where it builds, else gathered, for the torch
                  backend; paged for the kernels).
    cuda_graphs   capture the per-row decode step and the prefill once per lane-count bucket and
                  replay them (default: True on CUDA; ignored on a CPU).
    compile_step  run the per-row step (and the prefill) through torch.compile (default off: on a
                  CPU it does not pay, see docs/performance.md). Ignored for "paged".
    max_patches   stop after this many patches of the order (latency measurements on huge canvases);
                  tokens of the patches not reached stay 0. Shapes are those of the whole run.
    sync_debug    "warn" | "error": torch.cuda.set_sync_debug_mode during the patch loop (CUDA only),
                  to prove the loop never waits for the host.
    patch_times   record the wall time of every wave in stats.wave_seconds, and per patch of
                  the order the time of the wave that produced it in stats.patch_seconds
                  (= the patch's own time when sequential); CUDA events on a GPU.
    on_patch      called as on_patch(done, total, tokens, steps) after every wave: `done` patches of
                  `total` are finished, `steps` are the order indices this wave wrote, `tokens` is the
                  live output buffer [B, T, Hg*p, Wg*p] (patches not reached yet hold 0). Read it, do not
                  keep or modify it; reading it on a GPU waits for the device (a preview, not a default).
    """
    if sync_debug not in (None, "warn", "error"):
        raise ValueError(f"sync_debug must be None, 'warn' or 'error', got {sync_debug!r}")
    t0 = time.perf_counter()
    g = prepare(model, spec, seed, sampling, backend, pool_dtype, attention, cuda_graphs, compile_step,
                max_patches, schedule, max_lanes)
    sh, sched, kinds, n = g.sh, g.scheduler, g.kinds, g.n
    dev = model.device
    on_cuda = dev.type == "cuda"
    P, B = model.cfg.P, spec.batch
    T, Hg, Wg = spec.grid

    stats = Stats(patches=n, tokens=T * Hg * Wg * P, backend=g.backend, schedule=schedule,
                  waves=len(sched.waves), mean_lanes=n / max(len(sched.waves), 1))
    free_rows = P - (g.known_mask[:, :P].sum(1) if g.known_mask is not None else np.zeros(n, dtype=np.int64))
    stats.generated_tokens = int(B * free_rows[kinds != PatchKind.GIVEN].sum())

    events = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n, desc="patches", unit="patch")
    done = [0]

    def on_wave(steps):
        k = len(steps)
        done[0] += k
        if patch_times:
            events.append(_mark(on_cuda))
        if bar is not None:
            bar.update(k)
        if on_patch is not None:
            on_patch(done[0], n, sh.out, steps)

    debug = (_sync_debug(sync_debug) if on_cuda and sync_debug else contextlib.nullcontext())
    with debug:
        if patch_times:
            events.append(_mark(on_cuda))
        sched.run(on_wave)
    if bar is not None:
        bar.close()
    if on_cuda:
        torch.cuda.synchronize(dev)
    stats.seconds = time.perf_counter() - t0
    stats.peak_pages = int(sh.pool.peak.item())
    stats.pool_bytes = sh.pool.nbytes
    stats.pages_left, stats.plan_peak_pages = sh.pool.in_use(), sh.plan.peak_pages
    stats.attention, stats.cuda_graphs = g.attention, g.graphs
    stats.compiled = g.step.compiled
    stats.staging_bytes, stats.capture_seconds = g.step.staging_bytes, g.capture_seconds
    stats.patches_total, stats.max_lanes = len(spec.order), sh.K
    if patch_times:
        stats.wave_seconds = per_wave = _elapsed(events, on_cuda)
        per_step = {i: t for groups, t in zip(sched.waves, per_wave) for g in groups for i in g.steps}
        stats.patch_seconds = [per_step[i] for i in sorted(per_step)]   # of the wave that made it
    return sh.out, stats


def _mark(on_cuda):
    if on_cuda:
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        return e
    return time.perf_counter()


def _elapsed(marks, on_cuda):
    if on_cuda:
        return [a.elapsed_time(b) * 1e-3 for a, b in zip(marks, marks[1:])]
    return [b - a for a, b in zip(marks, marks[1:])]


@contextlib.contextmanager
def _sync_debug(mode):
    old = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(old)
