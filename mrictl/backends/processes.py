"""Worker processes on this machine (`mrictl worker run --workers N`), sharing its cores.

Any backend starts them the same way: each child is `mrictl worker run --json` with the
variables that point it at the same backend (the local home, or the aws resources); it prints
`{"jobs_done": N, ...}` on stdout when it stops, which is how the parent counts the work done.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def available_cores() -> int:
    """Cores this process may run on (its affinity mask in a container), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def worker_environment(n: int, base: Mapping[str, str], cores: int | None = None) -> dict[str, str]:
    """`base` with the cores split between `n` worker processes: cores // n threads each.

    torch and BLAS start one thread per core in every process; n processes on the same cores
    then run n x cores threads that preempt each other. On a 2-core machine two such processes
    trained a 4-slice phantom volume 4.6-6.6x slower than one process alone (241 s against
    36 s), two with one thread each 1.1-1.2x faster (docs/benchmarks.md, "Slices in parallel
    across cores"). A thread count the caller set is kept.
    """
    threads = str(max(1, (cores or available_cores()) // max(1, n)))
    environment = dict(base)
    for variable in THREAD_VARIABLES:
        environment.setdefault(variable, threads)
    return environment


def worker_command(arguments: Sequence[str]) -> list[str]:
    """The command line of one worker process: the CLI's own `worker run`, as a container runs
    it, with `--json` so that it reports the jobs it finished."""
    return [sys.executable, "-m", "mrictl", "worker", "run", *arguments, "--json"]


class LocalWorkerProcesses:
    """`n` worker processes started together on this machine; see the module docstring."""

    def __init__(self, n: int, arguments: Sequence[str], env: Mapping[str, str]) -> None:
        environment = worker_environment(n, {**os.environ, **env})
        self.processes = [
            subprocess.Popen(worker_command(arguments), env=environment, stdout=subprocess.PIPE)
            for _ in range(n)
        ]

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    def wait(self) -> int | None:
        counts = []
        for process in self.processes:
            output, _ = process.communicate()
            try:
                counts.append(int(json.loads(output)["jobs_done"]))
            except (ValueError, KeyError, IndexError, TypeError):
                continue  # killed before it could report
        return sum(counts) if counts else None
