"""Threads: the CPUs a process may use (affinity, cgroup quota), and the tuner that moves a
run to the faster thread count while other programs compete for the CPU."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest
import torch

from charlm import threads
from charlm.corpus import open_corpus
from charlm.threads import (CONTENDED, RETRY, RETRY_MAX, ThreadTuner, available_cpus, cgroup_cpu_quota, halvings,
                            thread_tuner, use_available_cpus)
from charlm.train import train

from .conftest import TINY_MODEL, TINY_TRAIN


def fake_cgroups(tmp_path, proc_line: str, files: dict[str, str]):
    """A cgroup mount under tmp_path/cgroup and a /proc/self/cgroup that names `proc_line`."""
    root = tmp_path / "cgroup"
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    root.mkdir(exist_ok=True)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(proc_line + "\n")
    return root, proc


@pytest.fixture
def machine(monkeypatch):
    """Eight cores, all in this process's affinity mask, unless a test narrows it."""
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


def test_a_cgroup_v2_quota_limits_the_cpus(tmp_path, machine):
    root, proc = fake_cgroups(tmp_path, "0::/user.slice/job", {"user.slice/job/cpu.max": "150000 100000\n"})
    assert cgroup_cpu_quota(root, proc) == pytest.approx(1.5)
    assert available_cpus(root, proc) == 1  # one and a half CPUs keep one thread busy, not two


def test_the_tightest_quota_above_the_process_counts(tmp_path, machine):
    root, proc = fake_cgroups(tmp_path, "0::/a/b", {"a/b/cpu.max": "max 100000", "a/cpu.max": "200000 100000",
                                                     "cpu.max": "max 100000"})
    assert cgroup_cpu_quota(root, proc) == pytest.approx(2.0)
    assert available_cpus(root, proc) == 2


def test_no_quota_leaves_the_affinity_mask(tmp_path, machine, monkeypatch):
    root, proc = fake_cgroups(tmp_path, "0::/", {"cpu.max": "max 100000"})
    assert cgroup_cpu_quota(root, proc) is None
    assert available_cpus(root, proc) == 8
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {2, 5, 6}, raising=False)  # taskset -c 2,5,6
    assert available_cpus(root, proc) == 3


def test_a_container_sees_its_own_group_at_the_mount_root(tmp_path, machine):
    # /proc/self/cgroup names a path the container's mount does not show; the root holds the limit.
    root, proc = fake_cgroups(tmp_path, "0::/kubepods/pod1/c1", {"cpu.max": "400000 100000"})
    assert available_cpus(root, proc) == 4


def test_a_cgroup_v1_quota_limits_the_cpus(tmp_path, machine):
    root, proc = fake_cgroups(tmp_path, "4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc",
                              {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000",
                               "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000"})
    assert cgroup_cpu_quota(root, proc) == pytest.approx(3.0)
    root, proc = fake_cgroups(tmp_path / "unlimited", "4:cpu,cpuacct:/",
                              {"cpu,cpuacct/cpu.cfs_quota_us": "-1", "cpu,cpuacct/cpu.cfs_period_us": "100000"})
    assert cgroup_cpu_quota(root, proc) is None


def test_unreadable_cgroup_files_mean_no_limit(tmp_path, machine):
    root, proc = fake_cgroups(tmp_path, "0::/x", {"x/cpu.max": "garbage"})
    assert cgroup_cpu_quota(root, proc) is None
    assert available_cpus(root, tmp_path / "no-such-file") == 8


def test_threads_follow_the_available_cpus_unless_the_user_set_them(monkeypatch):
    calls = []
    monkeypatch.setattr(threads, "available_cpus", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    use_available_cpus()
    assert calls == [2]
    monkeypatch.setattr(threads, "available_cpus", lambda: 64)
    use_available_cpus()
    assert calls == [2]  # never more threads than torch chose
    monkeypatch.setattr(threads, "available_cpus", lambda: 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "16")
    use_available_cpus()
    assert calls == [2]
    assert thread_tuner(torch.device("cpu")) is None  # a count the user set is never tuned


def test_no_tuner_on_a_gpu_or_for_one_thread(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert thread_tuner(torch.device("cuda")) is None
    assert isinstance(thread_tuner(torch.device("cpu")), ThreadTuner)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert thread_tuner(torch.device("cpu")) is None


def test_counts_to_try_halve_down_to_one():
    assert halvings(2) == [2, 1]
    assert halvings(12) == [12, 6, 3, 1]


# -- the tuner, on a simulated machine ------------------------------------------------------------
class Machine:
    """A fake clock and a fake CPU whose speed (chars/s) at each thread count can change.

    `others` programs hold a core each; the training threads beyond the cores left wait for
    one, which the kernel's run-queue delay tells (None for a kernel that does not)."""

    WINDOW = 0.5  # seconds of one logging window

    def __init__(self, speeds: dict[int, float], others: int = 0, cores: int = 2, wait_known: bool = True):
        self.now = 0.0
        self.speeds, self.others, self.cores, self.wait_known = speeds, others, cores, wait_known
        self.threads = max(speeds)
        self.waited_so_far = 0.0
        self.log: list[tuple[float, int]] = []  # (time, threads) of each window

    def set_threads(self, count: int) -> None:
        self.threads = count

    def waited(self) -> float | None:
        return self.waited_so_far if self.wait_known else None

    def run(self, tuner: ThreadTuner, seconds: float) -> list[int]:
        """Windows for `seconds`; returns the lasting changes the tuner reported."""
        changes = []
        end = self.now + seconds
        while self.now < end:
            self.now += self.WINDOW
            runnable = self.threads + self.others
            if runnable > self.cores:  # the threads share the cores in turn
                self.waited_so_far += self.WINDOW * self.threads * (1 - self.cores / runnable)
            self.log.append((self.now, self.threads))
            changed = tuner.observe(self.speeds[self.threads])
            if changed is not None:
                changes.append(changed)
        return changes

    def share_at(self, count: int, since: float = 0.0) -> float:
        windows = [t for when, t in self.log if when > since]
        return windows.count(count) / len(windows)


def tuner_on(machine: Machine) -> ThreadTuner:
    return ThreadTuner(machine.threads, clock=lambda: machine.now, set_threads=machine.set_threads,
                       waited=machine.waited)


IDLE = {2: 36_000, 1: 24_000}
BUSY = {2: 16_000, 1: 28_000}  # a busy program holds one of the two cores


def test_an_idle_machine_keeps_all_threads_and_pays_for_no_trial():
    machine = Machine(IDLE)
    tuner = tuner_on(machine)
    assert machine.run(tuner, 1800) == []
    assert machine.share_at(2) == 1.0


def test_without_the_kernels_wait_times_an_idle_machine_pays_for_a_few_trials():
    machine = Machine(IDLE, wait_known=False)
    tuner = tuner_on(machine)
    assert machine.run(tuner, 107) == []
    assert machine.threads == 2
    assert 0 < machine.share_at(1) < 0.02  # the trials of one thread: a few windows in 107 s


@pytest.mark.parametrize("wait_known", [True, False])
def test_a_busy_core_moves_training_to_fewer_threads_at_once(wait_known):
    machine = Machine(BUSY, others=1, wait_known=wait_known)
    tuner = tuner_on(machine)
    assert machine.run(tuner, 30) == [1]
    assert machine.share_at(1) > 0.85
    assert [t for _, t in machine.log[:4]].count(1) >= 1  # found within the first two seconds


@pytest.mark.parametrize("wait_known", [True, False])
def test_a_collapse_brings_a_trial_of_fewer_threads_without_waiting(wait_known):
    machine = Machine(IDLE, wait_known=wait_known)
    tuner = tuner_on(machine)
    machine.run(tuner, 40)  # a periodic trial is past or due, the next one a minute away
    machine.speeds, machine.others = {2: 4_000, 1: 20_000}, 1  # another run starts beside this one
    assert machine.run(tuner, 2) == [1]
    assert machine.threads == 1


def test_a_slow_window_that_no_other_program_caused_brings_no_trial():
    machine = Machine(IDLE)
    tuner = tuner_on(machine)
    machine.run(tuner, 40)
    machine.speeds = {2: 12_000, 1: 8_000}  # slower for a reason of its own (a slower clock, say)
    assert machine.run(tuner, 20) == []
    assert machine.share_at(2, since=40) == 1.0


@pytest.mark.parametrize("wait_known", [True, False])
def test_threads_come_back_when_the_machine_is_quiet_again(wait_known):
    machine = Machine(BUSY, others=1, wait_known=wait_known)
    tuner = tuner_on(machine)
    machine.run(tuner, 300)
    assert machine.threads == 1
    machine.speeds, machine.others = IDLE, 0
    assert machine.run(tuner, RETRY_MAX + 10) == [2]
    assert machine.threads == 2


def test_the_wait_for_a_cpu_is_read_from_each_threads_schedstat(tmp_path):
    tasks = tmp_path / "task"
    for tid, text in {"101": "5000 2500000000 7\n", "102": "10 500000000 3\n"}.items():
        (tasks / tid).mkdir(parents=True)
        (tasks / tid / "schedstat").write_text(text)
    (tasks / "103").mkdir()  # a thread that ended between the listing and the read
    assert threads.run_queue_wait(tasks) == pytest.approx(3.0)
    assert threads.run_queue_wait(tmp_path / "missing") is None


SHARED_CORE = """
import os, subprocess, sys, time
from charlm.threads import run_queue_wait
os.sched_setaffinity(0, {0})
rival = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # inherits the one core
time.sleep(0.2)
before, end = run_queue_wait(), time.perf_counter() + 0.6
while time.perf_counter() < end:
    pass
print(run_queue_wait() - before)
rival.kill()
"""


def test_a_process_sharing_its_core_with_a_busy_program_is_seen_to_wait():
    if threads.run_queue_wait() is None or not hasattr(os, "sched_setaffinity"):
        pytest.skip("this kernel keeps no run-queue delay per thread")
    out = subprocess.run([sys.executable, "-c", SHARED_CORE], capture_output=True, text=True, check=True)
    assert float(out.stdout) > CONTENDED * 0.6  # contended as the tuner judges it (about half of the 0.6 s)


def test_trials_that_change_nothing_grow_rarer():
    machine = Machine(IDLE, wait_known=False)
    tuner = tuner_on(machine)
    machine.run(tuner, 1800)
    trial_windows = [when for when, t in machine.log if t == 1]
    gaps = [b - a for a, b in zip(trial_windows, trial_windows[1:])]
    assert gaps == sorted(gaps) and gaps[0] >= RETRY and max(gaps) <= RETRY_MAX + 1
    assert len(trial_windows) <= 9


def test_a_small_gain_is_not_worth_a_switch():
    machine = Machine({2: 20_000, 1: 21_000}, others=1)  # within the noise of a busy machine
    tuner = tuner_on(machine)
    assert machine.run(tuner, 200) == []
    assert machine.threads == 2


# -- in a run ------------------------------------------------------------------------------------
def test_a_run_logs_each_windows_threads_and_follows_its_tuner(tmp_path, corpus_file, monkeypatch):
    seen = []

    class Recording(ThreadTuner):
        def observe(self, chars_per_sec):
            seen.append((chars_per_sec, torch.get_num_threads()))
            return 1 if len(seen) == 2 else None

    # `charlm.train` is also the name of the function the package exports
    monkeypatch.setattr(importlib.import_module("charlm.train"), "thread_tuner", lambda device: Recording(2))
    train(open_corpus([corpus_file]), TINY_MODEL, {**TINY_TRAIN, "max_steps": 120}, out=tmp_path / "run")
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    windows = [e for e in log if "loss" in e]
    assert len(seen) == len(windows) >= 2
    assert [e["threads"] for e in windows] == [t for _, t in seen]
    assert [e["chars_per_sec"] for e in windows] == [s for s, _ in seen]


def test_a_run_hands_the_next_one_all_its_threads_back(tmp_path, corpus_file, monkeypatch):
    counts = []

    class Dropping(ThreadTuner):
        def observe(self, chars_per_sec):
            self._use(1)  # as if one thread had won a trial
            return 1

    tuner = Dropping(2, set_threads=counts.append)
    monkeypatch.setattr(importlib.import_module("charlm.train"), "thread_tuner", lambda device: tuner)
    train(open_corpus([corpus_file]), TINY_MODEL, {**TINY_TRAIN, "max_steps": 60}, out=tmp_path / "run")
    assert counts[0] == 1 and counts[-1] == 2 and tuner.current == 2
