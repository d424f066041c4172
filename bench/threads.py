"""Training speed beside a neighbour that comes and goes: intra-op threads that follow the load
(``training.threads = 0``, ``scoresde.run.threads.ThreadFollower``) against fixed counts.

    python -m bench.threads                       # digits DDPM++, phases of 15 s, 3 repeats
    python -m bench.threads --workload toy --phase_s 10 --neighbour spin --repeats 1

Each policy trains twice with the trainer's own ``next_batch`` + ``train_step`` + ``threads.tick``:
- ``arrives``: a quiet phase, then a busy 2-thread neighbour starts and a second phase runs beside it;
- ``leaves``: the neighbour runs from the start, then stops, and a second phase runs without it.
Printed: steps/s of each phase and its ratio to the policy's quiet speed (the first phase of
``arrives``), and the thread count at the end of each phase. Target: beside the neighbour (arrives)
and after it left (leaves) at least 60 % of the quiet speed. Each run trains ``--warmup_s`` seconds
before its first phase (a cold start would make the quiet speed look low and every ratio high); with
``--repeats`` the policies take turns and each cell is the median over the repeats. The neighbour is a
subprocess doing a 2-thread matmul loop (``--neighbour matmul``) or two busy-loop processes
(``--neighbour spin``).
On a machine shared with other work the numbers move with it: compare with ``uptime``.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from scoresde.cli.factory import options_from_config
from scoresde.configs.digits.ddpmpp_vp import get_config as digits_config
from scoresde.configs.toy.gmm_vp import get_config as gmm_config
from scoresde.run import threads
from scoresde.run.distributed import DistContext
from scoresde.run.runtime import available_cores
from scoresde.train.loop import next_batch, setup_run, train_step

WORKLOADS = {"digits": digits_config, "toy": gmm_config}

MATMUL = ("import sys, torch\ntorch.set_num_threads(2)\na = torch.randn(384, 384)\nprint('ready', flush=True)\n"
          "while True:\n    a = torch.tanh(a @ a)\n")
SPIN = "print('ready', flush=True)\nwhile True:\n    pass\n"


class Neighbour:
    """A busy 2-thread neighbour process (or two busy-loop processes), started and stopped on demand."""

    def __init__(self, kind: str):
        self.kind, self.procs = kind, []

    def start(self) -> None:
        scripts = [MATMUL] if self.kind == "matmul" else [SPIN, SPIN]
        env = {**os.environ, "OMP_NUM_THREADS": "2"}
        self.procs = [subprocess.Popen([sys.executable, "-c", s], stdout=subprocess.PIPE, text=True, env=env)
                      for s in scripts]
        for p in self.procs:
            p.stdout.readline()          # busy from here on

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
            p.wait()
        self.procs = []


def workload_run(workload: str, asked_threads: int, workdir: str):
    config = WORKLOADS[workload]()
    config.device = "cpu"
    config.training.threads = asked_threads
    config.training.tensorboard = config.training.progress_bar = False
    return setup_run(options_from_config(config), workdir, DistContext())


def phase(run, seconds: float) -> tuple[float, int]:
    """Train for ``seconds``; steps/s and the thread count at the end."""
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        train_step(run, *next_batch(run))
        threads.tick(run.step)
        steps += 1
    return steps / (time.perf_counter() - start), torch.get_num_threads()


def scenario(workload: str, asked_threads: int, neighbour: Neighbour, arrives: bool, phase_s: float,
             warmup_s: float) -> list[tuple[float, int]]:
    """Two phases; the neighbour starts between them (``arrives``) or runs in the first only."""
    with tempfile.TemporaryDirectory() as workdir:
        if not arrives:
            neighbour.start()
        try:
            run = workload_run(workload, asked_threads, workdir)
            phase(run, warmup_s)
            first = phase(run, phase_s)
            neighbour.start() if arrives else neighbour.stop()
            second = phase(run, phase_s)
        finally:
            neighbour.stop()
            threads.follow(None)
    return [first, second]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="digits")
    parser.add_argument("--phase_s", type=float, default=15.0, help="seconds per phase")
    parser.add_argument("--warmup_s", type=float, default=3.0, help="seconds of training before the first phase")
    parser.add_argument("--repeats", type=int, default=3, help="runs of every policy; each cell is their median")
    parser.add_argument("--neighbour", choices=("matmul", "spin"), default="matmul")
    args = parser.parse_args()
    os.environ.pop("OMP_NUM_THREADS", None)          # the automatic count must not be pinned
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("scoresde.run.threads").setLevel(logging.INFO)
    cores = available_cores()
    policies = [("auto (follows the load)", 0), ("fixed 1", 1), ("fixed 2", 2)]
    if cores > 2:
        policies.append((f"fixed {cores} (all cores)", cores))
    print(f"{args.workload}, {cores} cores, neighbour: {args.neighbour}, phases of {args.phase_s:g} s; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    neighbour = Neighbour(args.neighbour)
    runs = {name: [] for name, _ in policies}
    for repeat in range(args.repeats):
        for name, asked in policies:
            (quiet, t_quiet), (beside, t_beside) = scenario(args.workload, asked, neighbour, True, args.phase_s,
                                                            args.warmup_s)
            (before, t_before), (after, t_after) = scenario(args.workload, asked, neighbour, False, args.phase_s,
                                                            args.warmup_s)
            runs[name].append((quiet, t_quiet, beside, t_beside, before, t_before, after, t_after))
            print(f"  repeat {repeat + 1}, {name}: quiet {quiet:.2f}, arrives {beside:.2f} ({100 * beside / quiet:.0f}%), "
                  f"there {before:.2f}, left {after:.2f} ({100 * after / quiet:.0f}%) st/s", flush=True)
    print(f"\n{'policy':<26}{'quiet':>14}{'neighbour arrives':>26}{'neighbour there':>20}{'neighbour left':>26}")
    for name, results in runs.items():
        quiet, beside, before, after = (statistics.median(r[i] for r in results) for i in (0, 2, 4, 6))
        t_quiet, t_beside, t_before, t_after = (statistics.median_low(r[i] for r in results) for i in (1, 3, 5, 7))
        arrives_pct, left_pct = (100 * statistics.median(r[i] / r[0] for r in results) for i in (2, 6))
        print(f"{name:<26}{quiet:>7.2f} st/s {t_quiet:>2}t"
              f"{beside:>9.2f} st/s {arrives_pct:>4.0f}% {t_beside:>2}t"
              f"{before:>9.2f} st/s {t_before:>2}t"
              f"{after:>9.2f} st/s {left_pct:>4.0f}% {t_after:>2}t")
    print(f"\nMedians over {args.repeats} repeats. st/s: training steps per second; %: of the policy's own quiet "
          "speed (the median of each repeat's ratio); t: intra-op threads at the end of the phase. "
          f"Load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
