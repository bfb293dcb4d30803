"""One writer per output: an exclusive lock on a result store, a training ``output_dir`` or a demo folder.

Two processes writing one output lose data: two evaluations compact the same store from their own
copies, two trainings mix checkpoints and logs in one folder. ``output_lock(path)`` takes an exclusive
``flock`` on a lock file beside a store (``.results.jsonl.lock``) or inside a folder (``.recap.lock``)
and writes the holder's PID into it. A second process gets ``OutputLocked`` at once — one line naming
the output and the holder's PID — instead of waiting or writing beside it. The kernel drops the lock
when its holder exits or is killed, so a crashed run never leaves a stale lock behind (the lock file
itself stays; it holds nothing but the last holder's PID).

Locks are per process and re-entrant: a process that already holds an output's lock (a suite that
evaluates several benchmarks into one store) takes it again without blocking itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

_held: dict[Path, list] = {}  # lock file → [fd, depth], this process's held locks
_guard = threading.Lock()


class OutputLocked(ValueError):
    """Another process is writing this output (a ValueError, so the CLI prints one ``error:`` line)."""


def lock_file(path: str | os.PathLike, folder: bool) -> Path:
    """The lock file of output ``path``: ``.recap.lock`` inside a folder, ``.<name>.lock`` beside a file."""
    path = Path(path).resolve()  # one lock for an output, whatever link leads to it
    return path / ".recap.lock" if folder else path.with_name(f".{path.name}.lock")


def _holder(lock: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(lock.read_text().split()[0])
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        return f"PID {pid}" + (f" ({cmd[:120]})" if cmd else "")
    return "another process"


def acquire(path: str | os.PathLike, what: str = "", folder: bool = False) -> Path:
    """Take the exclusive lock of output ``path`` (a file, or a ``folder`` created if missing) or raise
    ``OutputLocked`` naming the holder. Returns the lock file; give it back with ``release``."""
    path = Path(path)
    if folder:
        path.mkdir(parents=True, exist_ok=True)
    lock = lock_file(path, folder)
    with _guard:
        if lock in _held:
            _held[lock][1] += 1
            return lock
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputLocked(
                f"{path}: {what or 'this output'} is being written by {_holder(lock)}; wait for it to finish, "
                "or write to another output (two writers would lose or mix results)"
            ) from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _held[lock] = [fd, 1]
        return lock


def release(lock: Path) -> None:
    with _guard:
        entry = _held.get(lock)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _held[lock]
            os.close(entry[0])  # closing the descriptor drops the flock


@contextlib.contextmanager
def output_lock(path: str | os.PathLike, what: str = "", folder: bool = False) -> Iterator[Path]:
    """``with output_lock(out):`` — hold the exclusive lock of ``out`` for the block (see ``acquire``)."""
    lock = acquire(path, what, folder)
    try:
        yield lock
    finally:
        release(lock)


def after_fork() -> None:
    """Forget the locks inherited from a parent (a forked worker does not hold them: they are the
    parent's, and closing the inherited descriptor would not drop the parent's lock anyway)."""
    _held.clear()


os.register_at_fork(after_in_child=after_fork)
