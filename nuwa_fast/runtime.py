"""What the command line sets up around a generation: CPU threads, backend report, live preview."""
from __future__ import annotations

import contextlib
import os

import torch


def default_threads() -> int:
    """The cores this process may run on (its CPU affinity), not every core of the machine."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):                                   # not Linux
        return max(1, os.cpu_count() or 1)


def set_threads(n: int | None) -> int:
    """torch's intra-op threads: n, or default_threads() when None. Returns the number set."""
    n = default_threads() if n is None else n
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"--threads must be a whole number >= 1, got {n!r}")
    torch.set_num_threads(n)
    return n


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4                            # glibc's mallopt parameters


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks for reuse instead of returning them to the kernel.

    A CPU training step allocates and frees tens of large temporaries (activations, logits of 33 MB
    at batch 8); by default glibc serves each block over 32 MB (and, after its dynamic threshold
    resets, smaller ones) with a fresh mmap and unmaps it on free, so every step pays a page fault per
    4 KB touched and a TLB shootdown per unmap: measured at 38% of a training step's time in the
    kernel. With mmap off for the heap and no trimming, the blocks stay mapped and are reused. Memory
    once used stays with the process (its peak, as before). Off with NUWA_FAST_KEEP_MEMORY=0, and a
    no-op off glibc. Returns whether it was applied."""
    if os.environ.get("NUWA_FAST_KEEP_MEMORY", "1") == "0":
        return False
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    return mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1) == 1 and ok


def busy_hint(threads: int, loadavg=None) -> str | None:
    """A one-line hint when more threads than idle cores are asked for (OpenMP threads that wait for a
    preempted sibling at every barrier can be many times slower than one thread), else None."""
    if threads <= 1:
        return None
    try:
        load = os.getloadavg()[0] if loadavg is None else loadavg
    except (AttributeError, OSError):
        return None
    cores = default_threads()
    if load <= cores - threads + 0.5:
        return None
    return (f"note: load average {load:.1f} on the {cores} cores this process may use; with other work "
            f"running, --threads 1 can be much faster than --threads {threads}")


def backend_report() -> dict:
    """{backend: "available" | "absent: why"}: the ops registry's backends and the reasons it recorded."""
    from . import ops
    out = {b: "available" for b in ops.available_backends()}
    if "torch" in out:
        out["torch"] = "available (reference, fp32 accumulation)"
    if "triton" in out and not torch.cuda.is_available():
        out["triton"] = "available (interpreter: TRITON_INTERPRET=1)"
    out.update({b: f"absent: {why}" for b, why in ops.absent_backends().items()})
    return out


def checkpoint_path(name_or_path) -> str:
    """The file a `load(name_or_path)` reads, or what it builds instead."""
    from .checkpoint import bundled_path
    if os.path.exists(str(name_or_path)):
        return os.path.abspath(name_or_path)
    bp = bundled_path(str(name_or_path))
    return str(bp) if bp is not None else f"none: preset {name_or_path!r} with random weights"


class PreviewWriter:
    """An on_patch callback that rewrites `<output>.preview.png` every `every` patches.

    Sample 0, the frame being generated, decoded from the tokens so far (patches not reached yet
    decode from token 0). Written to a temporary name and renamed, so a viewer never reads half a file.
    """

    def __init__(self, out_path: str, every: int):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"--preview must be a whole number of patches >= 1, got {every!r}")
        root, _ = os.path.splitext(out_path)
        self.path, self.every, self.writes, self.last = f"{root}.preview.png", every, 0, 0

    def __call__(self, event) -> None:
        # a wave finishes several patches: write when it crosses a multiple of `every`, and at the end
        if event.done // self.every == self.last // self.every and event.done != event.total:
            return
        self.last = event.done
        d, name = os.path.split(os.path.abspath(self.path))
        os.makedirs(d, exist_ok=True)
        tmp = os.path.join(d, f".{name}.tmp{os.getpid()}.png")
        try:
            event.image().save(tmp)
            os.replace(tmp, self.path)
            self.writes += 1
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def remove(self) -> None:
        if os.path.exists(self.path):
            os.remove(self.path)


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op threads at n inside the block (yields the count before), restored after. The fused CPU row step runs its
    own thread pool: torch's OpenMP workers, woken by the few large copies of a group (its pages into
    the pool), spin after each of them and take a core from that pool's rows (measured: 10-25% of the
    tokens/s of a 16 x 16 image at 2 threads)."""
    before = torch.get_num_threads()
    if before == n:
        yield before
        return
    torch.set_num_threads(n)
    try:
        yield before
    finally:
        torch.set_num_threads(before)
