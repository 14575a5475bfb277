"""Torch's compute threads, shared with the other sessions of this server.

A long forward pass in one session (a trace of 512 tokens takes seconds on a laptop) runs on every
core torch has. On a machine with few cores that leaves the other sessions' page runs, the server's
event loop and the browser waiting for a core: on 2 cores another session's rerun took 1.7× its idle
time while one session traced (`bench/bench_sessions.py`). So while more than one session is
connected, torch computes with one core fewer than it would alone (a session alone has them all),
and a page run doing long work (`yield_to_other_sessions`) runs only when the others' page runs leave
a core idle.

torch keeps the setting per thread (OpenMP's thread count is a per-thread setting) and hands the last
value set to threads it has not seen yet, so it is set again in every page run that uses the model,
once it is loaded (`ui.state.load_current_model`), in the page's own thread, before the page's work
with it: a run started before a second session connected keeps its threads until it is over. A
training run sets them again before every step (`core.training.jobs.TrainingJob.before_step`).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from functools import cache

log = logging.getLogger(__name__)

LONG_WORK_NICE = 10  # the scheduling priority (nice) of a page run's thread once it does long work


def threads_for(sessions: int, cores: int) -> int:
    """Compute threads for one session's work while `sessions` are connected, torch alone having `cores`."""
    return cores if sessions <= 1 else max(1, cores - 1)


@cache
def cores() -> int:
    """The threads torch would compute with alone: its own default (the machine's cores, or what
    OMP_NUM_THREADS / MKL_NUM_THREADS ask for), read once, before anything here changed it."""
    import torch

    return torch.get_num_threads()


def connected_sessions() -> int:
    """Browser sessions connected to this server now; 1 outside a server (scripts, tests)."""
    from streamlit.runtime import Runtime

    if not Runtime.exists():
        return 1
    try:
        return int(Runtime.instance()._session_mgr.num_active_sessions())
    except AttributeError:  # Streamlit's session manager is not public API: count none but this one
        _warn_uncounted()
        return 1


@cache
def _warn_uncounted() -> None:
    """Said once per process: it is asked on every page run and every training step."""
    log.warning("this Streamlit version does not count sessions; torch keeps all its threads")


def share_cores() -> int:
    """Set torch's threads for this thread's work (see the module docstring) and return how many."""
    import torch

    n = threads_for(connected_sessions(), cores())  # cores() reads the default before any change
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def yield_to_other_sessions() -> bool:
    """Before long work in a page run (a trace, the logit lens of every layer): while other sessions
    are connected, let this thread run only on a core no one else wants for the rest of the run, so
    the others' page runs (and the browser, on a local machine) go first. True if done.

    Linux's SCHED_IDLE policy (and nice LONG_WORK_NICE under it): the scheduler counts a core that
    runs only such a thread as idle, so another session's thread is placed there at once and takes
    the core over as it wakes; under plain nice 10 it still waited for the core now and then
    (`bench/bench_sessions.py`: another session's rerun during a trace 1.5–1.8× its idle time, 1.2×
    with SCHED_IDLE). Linux only (elsewhere the call would change the whole process). A thread cannot
    raise its priority again, so it stays lower until the run ends with its thread (Streamlit starts
    each run in a new one); alone, it changes nothing: no one else wants the core.
    """
    if not sys.platform.startswith("linux") or connected_sessions() <= 1:
        return False
    thread = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, thread) < LONG_WORK_NICE:
            os.setpriority(os.PRIO_PROCESS, thread, LONG_WORK_NICE)
        os.sched_setscheduler(thread, os.SCHED_IDLE, os.sched_param(0))
    except OSError as e:  # a sandbox that forbids it: the work runs as it is
        log.info("could not lower the priority of a page run: %s", e)
        return False
    return True
