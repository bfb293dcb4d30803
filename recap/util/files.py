"""Crash-safe file writing: every output recap produces appears whole or not at all.

``atomic_write(path)`` yields a temporary file next to ``path`` (same folder, so the rename never
crosses file systems); when the block ends without an error the data is flushed to disk and the file is
renamed over ``path`` in one step (``os.replace``). A crash mid-write leaves ``path`` as it was (absent,
or the previous complete version) plus, at worst, a ``.<name>.tmp-<pid>`` file that nothing reads; the
next write of ``path`` removes it (``clean_leftovers``). ``atomic_dir(path)`` does the same for a folder
written by someone else's ``save_pretrained``.

A write that fails because the disk is full or read-only raises an ``OSError`` (of the original type and
``errno``) whose message names the output that was asked for — ``cannot write runs/mix.jsonl: No space
left on device`` — never the temporary file (``output_error``, ``write_failure``).

Append-only logs (result stores, judge caches) are not rewritten: they append whole lines, fsync, and
detect a torn last line when they are read back (``recap.util.cache.JsonlCache``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import time
from pathlib import Path

STALE_AFTER_S = 24 * 3600  # a leftover whose writer's PID is alive again (reused) is stale after a day
# Errors that mean "this output cannot be written here" rather than a bug (an OSError without a file
# name is renamed after the output only for these).
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG, errno.EACCES, errno.EPERM}
# What torch's zip writer says when a write fails (it hides the errno): a full or read-only disk.
_TORCH_WRITE_FAILURES = ("iostream error", "unexpected pos", "PytorchStreamWriter failed", "file write failed")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_failure(exc: BaseException) -> str | None:
    """Why a write failed, if ``exc`` (or the exception it chains) says the storage refused it — a full or
    read-only disk, a quota, an I/O error: the ``strerror`` of an ``OSError``, or a plain description of
    torch's and safetensors' own writer errors. None for anything else (a bug keeps its traceback)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
            return exc.strerror or os.strerror(exc.errno)
        text = str(exc)
        if isinstance(exc, RuntimeError) and any(s in text for s in _TORCH_WRITE_FAILURES):
            return "torch could not write the file (a full or read-only disk?)"
        if type(exc).__name__ == "SafetensorError" and "I/O error" in text:
            m = re.search(r"I/O error: ([^(]+)", text)
            return m.group(1).strip() if m else text
        exc = exc.__cause__ or exc.__context__
    return None


def output_error(
    path: str | os.PathLike, exc: BaseException, scratch: Path | None = None, verb: str = "write"
) -> OSError | None:
    """``exc`` restated as ``cannot <verb> <path>: <why>`` when it is a storage failure while writing
    ``path`` (through its temporary ``scratch`` file or folder); None when it is about something else (an
    error naming another file, a bug)."""
    path = Path(path)
    why = write_failure(exc)
    if isinstance(exc, OSError) and exc.filename is not None:
        named = Path(os.fsdecode(exc.filename))
        ours = (
            named == path
            or named in path.parents
            or (scratch is not None and (named == scratch or scratch in named.parents))
        )
        if not ours:
            return None
        why = why or exc.strerror or str(exc)
    if why is None:
        return None
    cls = type(exc) if isinstance(exc, OSError) else OSError
    try:
        error = cls(f"cannot {verb} {path}: {why}")
    except TypeError:  # an OSError subclass with its own constructor
        error = OSError(f"cannot {verb} {path}: {why}")
    error.errno = getattr(exc, "errno", None)
    return error


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive but someone else's (EPERM), or unknowable: not ours to judge
        return True
    return True


def clean_leftovers(path: str | os.PathLike) -> list[Path]:
    """Remove what killed writers of ``path`` left next to it: ``.<name>.tmp-<pid>`` files and folders (and
    ``.<name>.old-<pid>`` folders of ``atomic_dir``) whose process is gone, or older than
    ``STALE_AFTER_S``. A kill between ``atomic_dir``'s two renames leaves ``path`` missing and its
    previous version in ``.old-<pid>``: that version is put back. Returns what was removed or restored."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(tmp|old)-(\d+)")
    try:
        entries = [e for e in os.scandir(path.parent) if pattern.fullmatch(e.name)]
    except OSError:
        return []
    done = []
    for entry in entries:
        kind, pid = pattern.fullmatch(entry.name).groups()
        leftover = Path(entry.path)
        try:
            age = time.time() - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        if int(pid) == os.getpid() or (_pid_alive(int(pid)) and age < STALE_AFTER_S):
            continue
        with contextlib.suppress(OSError):
            if kind == "old" and not path.exists():
                os.replace(leftover, path)
            elif entry.is_dir(follow_symlinks=False):
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
            done.append(leftover)
    return done


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temporary file for writing; on success it replaces ``path`` atomically. A symbolic link is
    followed: its target is replaced and the link kept (a link to a shared store stays a link)."""
    path = Path(path)
    target = path.resolve() if path.is_symlink() else path
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    binary = "b" in mode
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_leftovers(target)
        with open(tmp, mode, encoding=None if binary else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except Exception as e:
        named = output_error(path, e, tmp)
        if named is None:
            raise
        raise named from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> Path:
    """``Path.write_text``, atomically."""
    with atomic_write(path) as fh:
        fh.write(text)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_write(path, "wb") as fh:
        fh.write(data)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temporary folder next to ``path``; on success it replaces ``path`` (a previous ``path`` is
    removed only once the new one is complete)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_leftovers(path)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        yield tmp
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    except Exception as e:
        named = output_error(path, e, tmp)
        if named is None:
            raise
        raise named from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
