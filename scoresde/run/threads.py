"""Intra-op threads that follow the machine's load while a run goes on.

``training.threads = 0`` picks the thread count at start (``runtime.set_threads``); a neighbour that
starts later would then share the cores with as many spinning OpenMP threads as there are cores, and
both slow down many times over (each of our steps waits for its slowest thread). ``ThreadFollower``
re-reads the load every half second, from the loops' ``tick()`` calls and a forward pre-hook on every
module, and lowers ``torch.set_num_threads`` when other processes keep cores busy, raising it again when
they leave.

The load is the busy time of the CPUs this process may run on less this process's own CPU time (all of
its threads, spinning ones included), so our own threads never count as a neighbour. One follower per
process (the thread count is a process-wide setting): ``follow`` installs it, ``tick`` drives it.
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Callable, Protocol

import torch

logger = logging.getLogger(__name__)


class LoadSource(Protocol):
    cores: int                                  # the CPUs this process shares with the others

    def others_busy(self) -> float | None:
        """Cores other processes kept busy since the previous call (``None`` if unknown)."""


def affinity_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity; every CPU where there is none)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def read_cpu_seconds(cpus: set[int], stat: str = "/proc/stat") -> tuple[float, float] | None:
    """(busy, total) seconds of ``cpus`` since boot from the ``cpuN`` lines of ``/proc/stat``
    (busy: all but idle and iowait), or ``None`` where there is no such file."""
    try:
        lines = Path(stat).read_text().splitlines()
    except OSError:
        return None
    busy = total = 0.0
    for line in lines:
        name, *values = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        ticks = [float(v) for v in values]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0.0)
        busy, total = busy + sum(ticks) - idle, total + sum(ticks)
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return (busy / hz, total / hz) if total > 0 else None


class CpuLoad:
    """Cores other processes kept busy on this process's CPUs between two readings: the CPUs' busy
    time less this process's CPU time (``time.process_time``, every thread), over the time elapsed."""

    def __init__(self, cpus: set[int] | None = None, own_seconds: Callable[[], float] = time.process_time):
        self.cpus = cpus if cpus is not None else affinity_cpus()
        self.cores = len(self.cpus)
        self.own_seconds = own_seconds
        self.previous = self._reading()

    def _reading(self) -> tuple[float, float, float] | None:
        machine = read_cpu_seconds(self.cpus)
        return None if machine is None else (*machine, self.own_seconds())

    def others_busy(self) -> float | None:
        now, before = self._reading(), self.previous
        self.previous = now
        if now is None or before is None or now[1] <= before[1]:
            return None
        busy, total, own = (a - b for a, b in zip(now, before))
        return max(0.0, busy - own) / (total / self.cores)


class ThreadFollower:
    """``tick`` at most every ``interval_s`` reads ``load`` and sets the threads that fit beside the
    other processes: ``cores`` less the cores they keep busy (a part of a core up to ``slack`` is not
    counted), between 1 and ``ceiling`` (the count of a quiet machine). Fewer threads at once (while too
    many threads share the cores with a neighbour, each step is many times slower, so the reaction time
    counts); more only once the readings have asked for more for ``rise_after_s`` in a row (a neighbour
    between two bursts of work should not flip the count back and forth). Each change is logged.

    A reading (``/proc/stat`` and the process's CPU time) costs about 40 microseconds, so the default
    half-second interval is free beside any training step."""

    def __init__(self, ceiling: int, load: LoadSource, *, threads: int | None = None, interval_s: float = 0.5,
                 slack: float = 0.4, rise_after_s: float = 2.0, clock: Callable[[], float] = time.monotonic,
                 apply: Callable[[int], None] = torch.set_num_threads):
        if ceiling < 1:
            raise ValueError(f"ceiling must be at least 1 thread, got {ceiling}")
        self.ceiling, self.load, self.interval_s, self.slack = ceiling, load, interval_s, slack
        self.rise_after_s, self.clock, self.apply = rise_after_s, clock, apply
        self.threads = ceiling if threads is None else threads
        self.checked = clock()
        self.step: int | None = None             # the last step a loop reported, for the log line
        self.rising_since: float | None = None   # when the readings in a row that ask for more threads began

    def fit(self, busy: float) -> int:
        """The threads that fit beside ``busy`` cores of other work."""
        return max(1, min(self.ceiling, self.load.cores - math.ceil(busy - self.slack)))

    def tick(self, step: int | None = None) -> int:
        """Re-read the load if ``interval_s`` passed since the last reading; returns the thread count."""
        if step is not None:
            self.step = step
        now = self.clock()
        if now - self.checked < self.interval_s:
            return self.threads
        self.checked = now
        busy = self.load.others_busy()
        if busy is None:
            return self.threads
        target = self.fit(busy)
        if target <= self.threads:
            self.rising_since = None
        elif self.rising_since is None:
            self.rising_since = now
        if target < self.threads or (self.rising_since is not None and now - self.rising_since >= self.rise_after_s):
            self._change(target, busy, self.step)
        return self.threads

    def _change(self, threads: int, busy: float, step: int | None) -> None:
        at = "" if step is None else f" at step {step}"
        logger.info("intra-op threads %d -> %d%s: other processes keep %.1f of %d cores busy", self.threads,
                    threads, at, busy, self.load.cores)
        self.apply(threads)
        self.threads, self.rising_since = threads, None


MAIN_THREAD = threading.main_thread().ident


class _Following:
    follower: ThreadFollower | None = None
    hook = None                         # the global forward pre-hook while a follower is installed


def tick_in_forward(module, args) -> None:
    """A forward pre-hook of every module while a follower is installed: a tick before each module call.
    Beside a neighbour that arrives mid-step, a step with too many threads can take seconds (the
    threads wait on each other in OpenMP's barriers), so a tick between steps only would come late; a
    tick between layers meets the neighbour within the step. Only the main thread ticks (the thread
    count is per thread), and never inside ``torch.compile``'s tracing."""
    if not torch.compiler.is_compiling() and threading.get_ident() == MAIN_THREAD:
        tick()


def follow(follower: ThreadFollower | None) -> None:
    """Make ``follower`` the one ``tick`` drives (``None``: the thread count stays as it is), and tick
    before every module call while there is one (``tick_in_forward``)."""
    _Following.follower = follower
    if follower is not None and _Following.hook is None:
        _Following.hook = torch.nn.modules.module.register_module_forward_pre_hook(tick_in_forward)
    elif follower is None and _Following.hook is not None:
        _Following.hook.remove()
        _Following.hook = None


def following() -> ThreadFollower | None:
    return _Following.follower


def tick(step: int | None = None) -> None:
    """One call per step of a loop (training, sampling, evaluation) and, through ``tick_in_forward``,
    before every module call: cheap (a clock read) except every half second, when the follower (if any)
    re-reads the load."""
    if _Following.follower is not None:
        _Following.follower.tick(step)
