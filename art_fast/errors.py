"""Errors that are the user's to fix, and their one-line description.

:class:`UserError` marks a problem with what was given (config, data, checkpoint, output
folder, arguments), not a bug: ``art-fast`` prints it as one line ``art-fast <cmd>: error:
...`` on stderr and exits with status 2, no traceback (``art-fast --debug`` shows it). The CLI
also treats :class:`~art_fast.train.config.ConfigError`, the ``ValueError`` /
``FileNotFoundError`` of our own checks and ``OSError`` (a full disk, a missing permission) the
same way; :func:`describe` gives the line (an ``OSError`` with the file and errno name).
"""

from __future__ import annotations

import errno as _errno

__all__ = ["UserError", "CheckpointError", "RunDirError", "IndexOutOfRange", "USER_ERRORS",
           "describe"]


class UserError(Exception):
    """A problem the user fixes (config, data, checkpoint, output folder, arguments)."""


class CheckpointError(UserError, ValueError):
    """A checkpoint file that does not load, is damaged (content digest mismatch) or is not an
    art_fast checkpoint; the message names the file."""


class RunDirError(UserError):
    """The output folder is in use by a live run, or holds a finished run (and neither
    ``--resume`` nor ``--overwrite`` was given)."""


class IndexOutOfRange(UserError, IndexError):
    """An index given on the command line is outside what it indexes."""


# What the CLI reports as one line with exit status 2 (``--debug``: the traceback instead).
# ValueError covers ConfigError and the checks of the data readers and the trainer.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ValueError, OSError)


def describe(e: BaseException) -> str:
    """``e`` as one line: an ``OSError`` as ``<file>: <strerror> (ENOSPC, errno 28)``, others
    as their message with line breaks folded (the type name when the message is empty)."""
    if isinstance(e, OSError) and e.errno is not None and e.strerror:
        name = _errno.errorcode.get(e.errno, "")
        code = f"{name}, errno {e.errno}" if name else f"errno {e.errno}"
        where = f"{e.filename}: " if e.filename is not None else ""
        if e.filename2 is not None:
            where = f"{e.filename} -> {e.filename2}: "
        return f"{where}{e.strerror} ({code})"
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    if isinstance(e, KeyError) and len(e.args) == 1:
        text = repr(e.args[0])
    if not text:
        return type(e).__name__
    return text if isinstance(e, USER_ERRORS) else f"{type(e).__name__}: {text}"
