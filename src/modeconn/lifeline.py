"""Worker processes that end when the process that started them ends, however it ended.

Every process pool the project starts (a study's local workers, the BigEarthNet reader's
workers) runs `die_with(os.getpid() of the starter)` first in each worker, as the pool's
initializer. Without it a SIGKILLed driver leaves its workers blocked forever on a queue whose
other end nobody will ever write (each worker holds both ends), and with them multiprocessing's
resource tracker, which exits only once every holder of its pipe has.

Two mechanisms, because neither covers everything alone:

- Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGKILL)``): the kernel kills the
  worker the moment its parent dies, even while the worker holds the GIL in C code. It fires
  when the parent *thread* that forked the worker exits, so it is set only when that thread is
  the parent's main thread (whose end is the process's end); a pool grown from a helper thread
  would otherwise lose its workers when that thread ends.
- A daemon thread that waits for the starter to end (a pidfd where the system has one, else a
  check every `interval` seconds that the parent is still the same and the starter is alive)
  and then ends the process. It covers the other cases: workers forked by a forkserver (their
  parent is the server, the starter is its client), pools grown from another thread, systems
  without prctl.

Ending is ``os._exit``: nothing half-done is tidied, which is safe because every result file is
written under a temporary name and renamed, and a job's lock is released by the kernel.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time

__all__ = ["die_with"]

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
EXIT_ORPHANED = 70  # the exit status of a worker that outlived its starter


def die_with(starter: int, interval: float = 0.5) -> None:
    """End this process (at once, exit status 70) when process `starter` ends. Call it first
    thing in a worker, with the pid the starter passed (``os.getppid()`` cannot stand in for it:
    once the starter has died, it names whoever adopted the orphan). If the starter is already
    gone, this process ends here."""
    parent = os.getppid()
    if starter == parent and sys.platform.startswith("linux") and _forked_by_main_thread(parent):
        _set_parent_death_signal()
    if starter == parent and os.getppid() != parent:
        os._exit(EXIT_ORPHANED)  # the parent died before the signal was armed
    pidfd = _open_pidfd(starter)
    if not _alive(starter, parent):
        os._exit(EXIT_ORPHANED)
    threading.Thread(target=_watch, args=(starter, parent, pidfd, interval),
                     name="modeconn-lifeline", daemon=True).start()


def _forked_by_main_thread(parent: int) -> bool:
    """Whether the thread of `parent` that started this process is its main thread."""
    try:
        with open(f"/proc/{parent}/task/{parent}/children") as f:
            return str(os.getpid()) in f.read().split()
    except OSError:  # no /proc or no CONFIG_PROC_CHILDREN: leave it to the watcher
        return False


def _set_parent_death_signal() -> None:
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def _open_pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when `pid` ends (Linux 5.3+), or None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # older system, or pid already gone (checked next)
        return None


def _alive(starter: int, parent: int) -> bool:
    """Whether the parent is the same (reparenting is immediate, even while the dead parent
    awaits reaping; a forkserver ends with its client) and the starter exists."""
    if os.getppid() != parent:
        return False
    if os.name == "nt":  # os.kill there terminates the process whatever the signal
        return True
    try:
        os.kill(starter, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else (cannot be ours, but alive)
        pass
    return True


def _watch(starter: int, parent: int, pidfd: int | None, interval: float) -> None:
    if pidfd is not None:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        while not poller.poll(None):  # readable once the starter has ended (zombie or reaped)
            pass
    else:
        while _alive(starter, parent):
            time.sleep(interval)
    os._exit(EXIT_ORPHANED)
