"""The thread follower, driven by a fake load and a fake clock (no real timing)."""
import logging
import threading

import pytest
import torch

from scoresde.run import runtime, threads
from scoresde.run.threads import CpuLoad, ThreadFollower, read_cpu_seconds


class FakeLoad:
    """Returns the queued readings of other processes' busy cores, one per call."""

    def __init__(self, cores, readings):
        self.cores, self.readings, self.calls = cores, list(readings), 0

    def others_busy(self):
        self.calls += 1
        return self.readings.pop(0)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def follower(cores, readings, ceiling=None, **kwargs):
    load, clock, applied = FakeLoad(cores, readings), FakeClock(), []
    f = ThreadFollower(ceiling or cores, load, clock=clock, apply=applied.append, **kwargs)
    return f, load, clock, applied


def ticks(f, clock, n, every=2.0):
    out = []
    for _ in range(n):
        clock.now += every
        out.append(f.tick())
    return out


def test_a_neighbour_lowers_the_threads_at_once_and_its_leaving_raises_them_after_two_readings():
    f, load, clock, applied = follower(8, [0.0, 2.0, 1.9, 0.1, 0.0, 0.0])
    assert ticks(f, clock, 6) == [8, 6, 6, 6, 8, 8]
    assert applied == [6, 8]


def test_between_readings_tick_reads_only_the_clock():
    f, load, clock, applied = follower(4, [3.0])
    for _ in range(100):
        clock.now += 0.004                 # 0.4 s in all, under the half-second interval
        f.tick()
    assert load.calls == 0 and applied == []
    clock.now += 0.1
    assert f.tick() == 1 and load.calls == 1


def test_by_default_a_neighbour_is_met_within_half_a_second_and_its_leaving_after_two():
    """Readings every 0.5 s: the first reading that sees the neighbour lowers the threads; raising waits
    until the readings have asked for more for 2 s (five readings), so a one-reading lull changes nothing."""
    f, load, clock, applied = follower(2, [0.0, 1.2, 0.0, 1.1, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert ticks(f, clock, 9, every=0.5) == [2, 1, 1, 1, 1, 1, 1, 1, 2]
    assert applied == [1, 2] and load.calls == 9


def test_a_small_background_load_costs_no_thread_and_never_fewer_than_one():
    f, _, clock, applied = follower(2, [0.3, 5.0, 1.6])
    assert ticks(f, clock, 3) == [2, 1, 1]
    assert applied == [1]


def test_the_ceiling_bounds_the_threads_when_a_quota_allows_fewer_than_the_cpus():
    f, _, clock, applied = follower(16, [0.0, 10.0, 13.5], ceiling=4)
    assert ticks(f, clock, 3) == [4, 4, 2]       # 6 free cores fit the 4; 2.5 free fit 2


def test_an_unknown_load_changes_nothing():
    f, _, clock, applied = follower(4, [None, None])
    assert ticks(f, clock, 2) == [4, 4] and applied == []


def test_each_change_is_logged_with_the_step(caplog):
    f, _, clock, _ = follower(4, [2.0])
    clock.now += 2.0
    with caplog.at_level(logging.INFO, logger="scoresde.run.threads"):
        f.tick(step=120)
    assert "intra-op threads 4 -> 2 at step 120: other processes keep 2.0 of 4 cores busy" in caplog.text


def test_the_ceiling_must_be_a_thread():
    with pytest.raises(ValueError, match="ceiling must be at least 1"):
        ThreadFollower(0, FakeLoad(1, []))


def test_the_module_tick_drives_the_installed_follower_only():
    f, load, clock, applied = follower(4, [3.0])
    try:
        threads.follow(f)
        clock.now += 5.0
        threads.tick(7)
        assert applied == [1]
        threads.follow(None)
        threads.tick(8)                    # nothing installed: a no-op
    finally:
        threads.follow(None)


def test_a_module_call_ticks_so_a_neighbour_is_met_within_a_step():
    """While a follower is installed every module call of the main thread ticks (a step with too many
    threads beside a neighbour can take seconds, so between steps is too late); none after it goes."""
    f, load, clock, applied = follower(2, [1.5])
    layer = torch.nn.Linear(2, 2)
    try:
        threads.follow(f)
        clock.now += 0.5
        other = threading.Thread(target=layer, args=(torch.zeros(1, 2),))
        other.start()
        other.join()
        assert load.calls == 0                       # only the main thread ticks
        layer(torch.zeros(1, 2))
        assert applied == [1] and load.calls == 1
    finally:
        threads.follow(None)
    clock.now += 0.5
    layer(torch.zeros(1, 2))
    assert load.calls == 1


def test_the_module_tick_stays_out_of_compiled_graphs():
    """While ``torch.compile`` traces, the per-module tick does nothing, so a network compiles to one graph
    without breaks even with a follower installed (traced, the tick's thread check and load reading would
    break the graph at every module)."""
    f, load, clock, applied = follower(2, [0.0] * 10)
    net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    try:
        threads.follow(f)
        clock.now += 1.0                             # a reading is due at the next tick
        torch._dynamo.reset()
        explained = torch._dynamo.explain(net)(torch.zeros(3, 2))
    finally:
        threads.follow(None)
        torch._dynamo.reset()
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)


def test_cpu_load_subtracts_this_processes_own_time(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    own = iter([0.0, 1.5])
    lines = ["cpu  0 0 0 0", "cpu0 {} 0 0 {} 0", "cpu1 {} 0 0 {} 0", "cpu2 900 0 0 0 0"]

    def write(busy0, idle0, busy1, idle1):
        stat.write_text("\n".join(lines).format(busy0, idle0, busy1, idle1) + "\n")

    real = read_cpu_seconds
    monkeypatch.setattr(threads, "read_cpu_seconds", lambda cpus: real(cpus, str(stat)))
    monkeypatch.setattr(threads.os, "sysconf", lambda name: 100)
    write(0, 100, 0, 100)
    load = CpuLoad(cpus={0, 1}, own_seconds=lambda: next(own))
    write(200, 100, 150, 150)         # 2 s on 2 CPUs: 3.5 s busy, 1.5 s of it ours
    assert load.cores == 2 and load.others_busy() == pytest.approx(1.0)


def test_set_threads_follows_only_the_automatic_count_of_one_cpu_process(monkeypatch):
    monkeypatch.setattr(runtime, "available_cores", lambda: 2)
    monkeypatch.setattr(runtime, "busy_cores", lambda window_s=0.3: 0.0)
    monkeypatch.setattr(runtime.torch, "set_num_threads", lambda n: None)
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        runtime.set_threads(0)
        assert threads.following() is not None and threads.following().threads == 2
        for asked, local, device in ((1, 1, None), (0, 2, None), (0, 1, runtime.torch.device("cuda"))):
            runtime.set_threads(asked, local, device)
            assert threads.following() is None, (asked, local, device)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        runtime.set_threads(0)
        assert threads.following() is None
    finally:
        threads.follow(None)


def test_the_training_loop_ticks_once_per_step_and_sampling_once_per_batch(tmp_path, monkeypatch):
    from helpers.tiny import tiny_config                    # tests/ is on the path
    from scoresde.cli.factory import options_from_config
    from scoresde.train import loop

    steps = []
    monkeypatch.setattr(loop.threads, "tick", lambda step=None: steps.append(step))
    loop.train(options_from_config(tiny_config(training__n_iters=4, training__snapshot_freq=4, training__snapshot_sampling=True,
                                                  training__snapshot_num_samples=16)), tmp_path)
    assert [s for s in steps if s is not None] == [1, 2, 3, 4]
    assert steps.count(None) == 1                           # the snapshot's one batch of samples


def test_a_training_run_follows_the_load_while_it_runs_and_leaves_no_hook_behind(tmp_path, monkeypatch):
    """A run with the automatic thread count installs the follower (and its per-module tick) and removes
    both on the way out, so a notebook's own modules run as before after ``train`` returns."""
    from helpers.tiny import tiny_config                    # tests/ is on the path
    from scoresde.cli.factory import options_from_config
    from scoresde.train import loop

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "available_cores", lambda: 1)
    monkeypatch.setattr(runtime, "busy_cores", lambda window_s=0.3: 0.0)
    installed = []
    monkeypatch.setattr(loop.threads, "tick", lambda step=None: installed.append(threads._Following.hook is not None))
    try:
        loop.train(options_from_config(tiny_config(training__n_iters=2)), tmp_path)
        assert installed and all(installed)
        assert threads.following() is None and threads._Following.hook is None
    finally:
        threads.follow(None)
