"""One error type per kind of fault, each with the exit code the command line returns for it.

    2    BadArgument  an argument (or environment variable) is invalid: the message names what to change
    3    BadFile      an input file (image, checkpoint, training state, token cache) cannot be used
    4    DoesNotFit   the request needs more memory or disk than there is: the message gives the numbers
    5    WriteFailed  an output could not be written (the message says what, if anything, was written)
    130  Interrupted  Ctrl-C (KeyboardInterrupt): the message says what, if anything, was written
    1    anything else: a RuntimeError's message, or one line naming an unexpected exception (a bug);
         NUWA_FAST_TRACEBACK=1 shows its traceback

The first four derive from the builtin errors Python code already catches (ValueError, MemoryError,
OSError), so `except ValueError` keeps working around a bad argument or a bad file.
"""
from __future__ import annotations


class NuwaError(Exception):
    exit_code = 1


class BadArgument(NuwaError, ValueError):
    exit_code = 2


class BadFile(NuwaError, ValueError):
    exit_code = 3


class DoesNotFit(NuwaError, MemoryError):
    exit_code = 4


class WriteFailed(NuwaError, OSError):
    exit_code = 5

    def __init__(self, message: str, written=()):
        super().__init__(message)
        self.written = list(written)

    def __str__(self):
        return self.args[0] if self.args else ""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, carrying the files that were completely written before it (all of them or none)."""
    exit_code = 130

    def __init__(self, written=()):
        super().__init__()
        self.written = list(written)


EXIT_CODES = {"bad argument": 2, "bad file": 3, "does not fit": 4, "write failed": 5, "interrupted": 130}


def exit_code(e: BaseException) -> int:
    """The exit code of an exception escaping a command (see the table above)."""
    import errno
    if isinstance(e, KeyboardInterrupt):
        return 130
    if isinstance(e, NuwaError):
        return e.exit_code
    if isinstance(e, MemoryError):
        return 4
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return 4
    if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        return 3
    if isinstance(e, (ValueError, TypeError)):
        return 2
    if isinstance(e, OSError):
        return 5
    return 1


def message(e: BaseException) -> str:
    """One line for the user: the error's own text, or its type when it has none."""
    text = str(e).strip()
    if isinstance(e, OSError) and e.strerror and not isinstance(e, NuwaError):
        text = f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    if isinstance(e, MemoryError) and not text:
        text = "out of memory (the request is larger than the memory of this machine)"
    if not text:
        text = type(e).__name__
    return text


def run_command(fn, argv, what_was_written=None) -> int:
    """Run a command's function, turning every escaping exception into `error: ...` and an exit code.

    what_was_written(e) -> str: for an interrupt, the sentence saying what was written (default: the
    files the Interrupted error carries, or "nothing was written").
    """
    import os
    import sys
    try:
        return fn(argv) or 0
    except SystemExit:
        raise
    except KeyboardInterrupt as e:
        if what_was_written is not None:
            said = what_was_written(e)
        else:
            written = getattr(e, "written", [])
            said = f"wrote {', '.join(written)}" if written else "nothing was written"
        print(f"interrupted: {said}", file=sys.stderr)
        return 130
    except Exception as e:                                              # the command line's boundary
        code = exit_code(e)
        if code == 1 and isinstance(e, RuntimeError):                # a library's own message (torch, ...)
            print(f"error: {message(e)}", file=sys.stderr)
        elif code == 1:
            if os.environ.get("NUWA_FAST_TRACEBACK"):
                raise
            print(f"error: unexpected {type(e).__name__}: {message(e)} (this is a bug; rerun with "
                  f"NUWA_FAST_TRACEBACK=1 for the traceback)", file=sys.stderr)
        else:
            print(f"error: {message(e)}", file=sys.stderr)
        return code


def human_bytes(n: float, digits: int = 2) -> str:
    """1536 -> "1.50 KiB" (digits after the point; whole bytes below 1 KiB)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.{digits}f} {unit}"
        n /= 1024
    return f"{n:.{digits}f} TiB"
