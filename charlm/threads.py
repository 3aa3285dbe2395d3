"""How many threads torch computes with on a CPU, and changing it when other programs compete.

torch starts one thread per core of the machine. Where this process may use fewer (a
container's CPU quota, a `taskset` affinity), the extra threads only wait for each other,
so charlm uses at most the cores it is given: the affinity mask, the cgroup quota (v2
`cpu.max`, v1 `cpu.cfs_quota_us`) and the machine, whichever is smallest.

A busy machine is worse: torch's threads meet at the end of every operation, and a thread
whose core another program holds stalls all the others; beside one busy program a 2-thread
step can take twice as long as a 1-thread step, and two 2-thread runs on 2 cores take three
times as long as one after the other. So while training, `ThreadTuner` watches the speed of
each logging window and now and then tries the neighbouring thread count for one window,
keeping it only when it is clearly faster; a window much slower than the recent ones (a
collapse: something else started) brings a trial of fewer threads at once. Trials cost one
window each and come at most every RETRY seconds, less often while they change nothing.

Where Linux tells how long this process's threads waited for a CPU (the run-queue delay in
/proc/self/task/*/schedstat), a trial of fewer threads waits until they do: on a machine
that nothing else uses, fewer threads cannot be faster, so an idle machine pays for no
trial. Elsewhere every trial is run as above.

OMP_NUM_THREADS or MKL_NUM_THREADS in the environment is the user's choice: it is kept, and
nothing is tuned.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import torch

PINNED_BY = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
MARGIN = 1.15  # a trial's thread count is kept only if its window is this much faster
COLLAPSE = 0.6  # a window this slow against the recent best at the same count brings a trial at once
FIRST_TRIAL = 1.0  # seconds before the first trial: a busy machine is best found at once
RETRY = 30.0  # seconds between trials; doubled after each one that changed nothing, up to RETRY_MAX
RETRY_MAX = 480.0
RECENT = 10  # windows at the current count that the collapse check compares against
# A window in which this process's threads waited for a CPU this share of their time or more is
# contended. Measured on 2 cores: alone 0.3%; beside one busy loop about 40%.
CONTENDED = 0.1

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
PROC_TASKS = Path("/proc/self/task")


def threads_pinned() -> bool:
    """Whether the user fixed the thread count through the environment."""
    return any(os.environ.get(name, "").strip() for name in PINNED_BY)


def available_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """The CPUs this process may use: its affinity mask, its cgroup's quota and the machine's count."""
    count = os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        count = min(count, len(os.sched_getaffinity(0)))
    quota = cgroup_cpu_quota(root, proc_cgroup)
    if quota is not None:
        count = min(count, max(1, math.floor(quota)))  # 1.5 CPUs of quota keep one thread busy, not two
    return max(1, count)


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """CPUs' worth of time per period that this process's cgroup (or one above it) may use; None: no limit."""
    limits = []
    for folder, v2 in _cgroup_folders(root, proc_cgroup):
        try:
            if v2:
                quota, period = (folder / "cpu.max").read_text().split()[:2]
                if quota != "max":
                    limits.append(int(quota) / int(period))
            else:
                quota = int((folder / "cpu.cfs_quota_us").read_text())
                period = int((folder / "cpu.cfs_period_us").read_text())
                if quota > 0 and period > 0:
                    limits.append(quota / period)
        except (OSError, ValueError, ZeroDivisionError):
            continue
    return min(limits) if limits else None


def _cgroup_folders(root: Path, proc_cgroup: Path) -> list[tuple[Path, bool]]:
    """The cgroup folders whose CPU limits apply to this process, with whether each is v2.

    /proc/self/cgroup names the process's group ("0::/a/b" in v2, "4:cpu,cpuacct:/a/b" in
    v1); its limits and those of the groups above it apply. In a container the hierarchy is
    often mounted at the process's own group, so the mount's root is looked at too."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    folders: list[tuple[Path, bool]] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            base, v2 = root, True
        elif "cpu" in controllers.split(","):
            base, v2 = root / controllers, False
            if not base.is_dir():  # mounted as cpu only, or under "cpu,cpuacct"
                base = next((b for b in (root / "cpu", root / "cpu,cpuacct") if b.is_dir()), base)
        else:
            continue
        relative = Path(path.lstrip("/"))
        for ancestor in [relative, *relative.parents]:
            folders.append((base / ancestor, v2))
    if not folders:
        folders = [(root, True), (root / "cpu", False)]
    return list(dict.fromkeys(folders))  # no folder twice


def use_available_cpus() -> int:
    """Set torch's threads to the CPUs this process may use (never more than torch chose);
    leave them alone when the user set them. Returns the count in use."""
    if not threads_pinned():
        wanted = min(torch.get_num_threads(), available_cpus())
        if wanted != torch.get_num_threads():
            torch.set_num_threads(wanted)
    return torch.get_num_threads()


def run_queue_wait(tasks: Path = PROC_TASKS) -> float | None:
    """Seconds this process's threads have spent ready to run but waiting for a CPU, summed
    over the threads alive now (schedstat's second field, in ns); None where the kernel does
    not say."""
    try:
        names = os.listdir(tasks)
    except OSError:
        return None
    total, read = 0, False
    for name in names:
        try:
            total += int((tasks / name / "schedstat").read_text().split()[1])
            read = True
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return total / 1e9 if read else None


def halvings(most: int) -> list[int]:
    """Thread counts worth trying, largest first: most, most // 2, ..., 1."""
    counts = []
    while most >= 1:
        counts.append(most)
        most //= 2
    return counts


class ThreadTuner:
    """Moves torch between thread counts while a run trains, toward the fastest.

    `observe` takes each logging window's speed (chars/s) and returns the new thread count
    when a trial has changed it for good, else None. A trial runs one window at the
    neighbouring count and compares it with the window just before. `waited()` gives the
    seconds the process's threads have waited for a CPU so far (run_queue_wait), or None
    where that is unknown."""

    def __init__(self, most: int, clock: Callable[[], float] = time.perf_counter,
                 set_threads: Callable[[int], None] = torch.set_num_threads,
                 waited: Callable[[], float | None] = run_queue_wait):
        self.counts = halvings(most)
        self.clock, self.set_threads, self.waited = clock, set_threads, waited
        self.current = most
        self._start()

    def restart(self) -> None:
        """Back to all threads, as new: for the next run in this process."""
        self._use(self.counts[0])
        self._start()

    def _start(self) -> None:
        clock = self.clock
        self.recent: deque[float] = deque(maxlen=RECENT)
        self.trial_from: tuple[int, float] | None = None  # during a trial: the count and speed it left
        self.skip = 1  # windows not to judge by: the first one holds the warm-up steps
        self.wait = RETRY
        self.next_trial = clock() + FIRST_TRIAL
        self.fewer_next = True  # which way the next periodic trial goes, where both ways are open
        self.last_wait = (clock(), self.waited())

    def contended(self, now: float) -> bool | None:
        """Whether the threads waited for a CPU for CONTENDED of the time since the last call; None: unknown."""
        then, waited_then = self.last_wait
        waited = self.waited()
        self.last_wait = (now, waited)
        if waited is None or waited_then is None or now <= then:
            return None
        return max(waited - waited_then, 0.0) >= CONTENDED * (now - then) * self.current

    def observe(self, chars_per_sec: float) -> int | None:
        now = self.clock()
        contended = self.contended(now)
        if self.skip:
            self.skip -= 1
            return None
        if self.trial_from is not None:
            return self._judge_trial(chars_per_sec, now)
        self.recent.append(chars_per_sec)
        collapsed = chars_per_sec < COLLAPSE * max(self.recent)
        if collapsed or now >= self.next_trial:
            target = self._neighbour(fewer=True if collapsed else self.fewer_next)
            if not collapsed:
                self.fewer_next = not self.fewer_next
            if target is not None and target < self.current and contended is False:
                return None  # nothing waits for these cores: fewer threads cannot help; the trial waits
            if target is not None:
                self.trial_from = (self.current, chars_per_sec)
                self._use(target)
            else:
                self.next_trial = now + self.wait
        return None

    def _judge_trial(self, chars_per_sec: float, now: float) -> int | None:
        before, speed_before = self.trial_from
        self.trial_from = None
        self.recent.clear()
        if chars_per_sec > speed_before * MARGIN:  # keep it; look again soon, the machine is changing
            self.recent.append(chars_per_sec)
            self.wait = RETRY
            self.next_trial = now + self.wait
            return self.current
        self._use(before)
        self.recent.append(speed_before)
        self.wait = min(2 * self.wait, RETRY_MAX)
        self.next_trial = now + self.wait
        return None

    def _neighbour(self, fewer: bool) -> int | None:
        """The next count down (fewer) or up from the current one; the other way if that is the end."""
        i = self.counts.index(self.current)
        down = self.counts[i + 1] if i + 1 < len(self.counts) else None
        up = self.counts[i - 1] if i > 0 else None
        return (down or up) if fewer else (up or down)

    def _use(self, count: int) -> None:
        self.current = count
        self.set_threads(count)


def thread_tuner(device: torch.device) -> ThreadTuner | None:
    """A tuner for a run on `device`: on a CPU with more than one thread, unless the user fixed them."""
    if device.type != "cpu" or threads_pinned() or torch.get_num_threads() < 2:
        return None
    return ThreadTuner(torch.get_num_threads())
