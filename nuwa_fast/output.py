"""Output files: checked before any work, written under unique temporary names, all or nothing.

check(path, kind, n) runs before generation: a known extension for the result's kind, a name, a
directory that exists (or can be made) and accepts files, room for the uncompressed result, and no
existing file under any of the n final names unless overwrite. write_all() then writes every file
to its own temporary name (`.<name>.<pid>-<random>.partial<ext>` beside it, created exclusively, so
concurrent writers never share one), and only when all are complete renames them into place, with
Ctrl-C held back during the renames: the batch appears whole or not at all.
"""
from __future__ import annotations

import errno
import os
import secrets
import shutil
import signal
import threading
from contextlib import contextmanager

from .errors import BadArgument, DoesNotFit, Interrupted, WriteFailed, human_bytes

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_EXTS = (".gif", ".mp4")


def _human(n: float) -> str:
    return human_bytes(n, digits=1)


def paths(path, kind: str, n: int) -> list[str]:
    """The final file names: `path` for one result, `root_0.ext`, `root_1.ext`, ... for n > 1.

    kind: "image" or "video". A path without an extension gets .png (image) / .gif (video).
    """
    allowed = IMAGE_EXTS if kind == "image" else VIDEO_EXTS
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise BadArgument(f"batch must be a whole number >= 1, got {n!r}")
    if not isinstance(path, (str, os.PathLike)):
        raise BadArgument(f"the output path must be a string, got {type(path).__name__}")
    path = os.fspath(path)
    base = os.path.basename(path)
    if not path.strip() or not base.strip():
        raise BadArgument(f"the output path {path!r} has no file name; give one, e.g. -o out{allowed[0]}")
    root, ext = os.path.splitext(path)
    if not ext and base.startswith(".") and base.lower() in IMAGE_EXTS + VIDEO_EXTS:
        raise BadArgument(f"the output path {path!r} has an extension but no name before it; "
                          f"e.g. -o out{base}")
    ext = ext.lower() or allowed[0]
    if ext not in allowed:
        other = "video" if kind == "image" else "image"
        hint = f" ({ext} is for {'an image' if other == 'image' else 'a video'})" if ext in (VIDEO_EXTS if kind == "image" else IMAGE_EXTS) else ""
        raise BadArgument(f"cannot save {'an image' if kind == 'image' else 'a video'} as {ext!r}{hint}; "
                          f"use one of {', '.join(allowed)}")
    if n == 1:
        return [root + ext]
    return [f"{root}_{i}{ext}" for i in range(n)]


def _existing_ancestor(d: str) -> str:
    d = os.path.abspath(d)
    while not os.path.exists(d):
        d = os.path.dirname(d)
    return d


def check(path, kind: str, n: int = 1, overwrite: bool = False) -> list[str]:
    """Every check that can be made before the work; returns the final names (see paths())."""
    names = paths(path, kind, n)
    if os.path.isdir(path):
        raise BadArgument(f"the output {os.fspath(path)} is an existing directory; give a file name inside it, "
                          f"e.g. {os.path.join(os.fspath(path), 'out' + (IMAGE_EXTS if kind == 'image' else VIDEO_EXTS)[0])}")
    d = os.path.dirname(os.path.abspath(names[0]))
    anc = _existing_ancestor(d)
    if not os.path.isdir(anc):
        raise BadArgument(f"cannot write {names[0]}: {anc} is a file, not a directory; choose another "
                          f"output path")
    for name in names:
        if os.path.isdir(name):
            raise BadArgument(f"the output {name} is an existing directory; give a file name inside it")
        if os.path.lexists(name) and not overwrite:
            raise BadArgument(f"{name} already exists; pass --overwrite (overwrite=True) to replace it, "
                              f"or choose another output path")
    if anc == d:                                    # probe: the directory must accept a new file
        try:
            fd, probe = _create_unique(names[0])
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise BadArgument(f"cannot write into {d}: {e.strerror or e}; choose another output "
                              f"directory") from None
    elif not os.access(anc, os.W_OK | os.X_OK):
        raise BadArgument(f"cannot create {d}: {anc} is not writable; choose another output directory")
    return names


def check_space(names, nbytes: int):
    """Refuse before the work when the output's filesystem lacks room for the uncompressed result."""
    anc = _existing_ancestor(os.path.dirname(os.path.abspath(names[0])))
    free = shutil.disk_usage(anc).free
    if free < nbytes:
        raise DoesNotFit(f"{anc} has {_human(free)} free but the result needs up to {_human(nbytes)} "
                         f"(uncompressed); free some space or write elsewhere")


def _create_unique(dst: str):
    """A new, exclusively created file beside dst; -> (fd, path)."""
    d, base = os.path.split(os.path.abspath(dst))
    ext = os.path.splitext(base)[1]
    for _ in range(100):
        tmp = os.path.join(d, f".{base}.{os.getpid()}-{secrets.token_hex(4)}.partial{ext}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise WriteFailed(f"cannot create a temporary file beside {dst}")


@contextmanager
def _sigint_held():
    """Defer Ctrl-C (main thread only) until the block is done; re-raised as KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    got = []
    old = signal.signal(signal.SIGINT, lambda *a: got.append(1))
    try:
        yield got
    finally:
        signal.signal(signal.SIGINT, old)


def write_all(items, names, writer, overwrite: bool = True) -> list[str]:
    """writer(item, tmp_path) for each item; then every temp is renamed to its name, or none is.

    Raises Interrupted (Ctrl-C) or WriteFailed (a full disk, ...) carrying the files written: none
    unless the failure came after the renames began. A name that appeared meanwhile is not replaced
    unless overwrite.
    """
    os.makedirs(os.path.dirname(os.path.abspath(names[0])), exist_ok=True)
    tmps = []
    try:
        for item, dst in zip(items, names):
            fd, tmp = _create_unique(dst)
            os.close(fd)
            tmps.append(tmp)
            writer(item, tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
    except KeyboardInterrupt:
        _remove(tmps)
        raise Interrupted([]) from None
    except OSError as e:
        _remove(tmps)
        what = "no space left on the device" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e))
        raise WriteFailed(f"could not write {names[len(tmps) - 1] if tmps else names[0]}: {what}; nothing "
                          f"was written") from e
    except BaseException:
        _remove(tmps)
        raise
    done = []
    with _sigint_held() as interrupted:
        try:
            for tmp, dst in zip(tmps, names):
                _place(tmp, dst, overwrite)
                done.append(dst)
        except OSError as e:
            _remove(tmps[len(done):])
            raise WriteFailed(f"could not rename the result into {names[len(done)]}: {e.strerror or e}; "
                              + (f"written: {', '.join(done)}" if done else "nothing was written"), done) from e
    if interrupted:
        raise Interrupted(done)
    return done


def _place(tmp: str, dst: str, overwrite: bool):
    if overwrite:
        os.replace(tmp, dst)
        return
    try:
        os.link(tmp, dst)                   # fails if dst exists: never replaces another writer's file
    except FileExistsError:
        raise OSError(errno.EEXIST, f"{dst} appeared while generating (another process wrote it); "
                                    f"pass overwrite to replace it") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(dst):
            raise OSError(errno.EEXIST, f"{dst} appeared while generating") from None
        os.replace(tmp, dst)                # no hard links on this filesystem
        return
    os.unlink(tmp)


def _remove(tmps):
    for t in tmps:
        try:
            os.unlink(t)
        except FileNotFoundError:
            pass
