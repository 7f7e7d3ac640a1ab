"""What this machine's CPU offers this process: the cores it may run on.

    from distill.hardware import usable_cores
    len(usable_cores())    # the threads worth starting; the study's lanes split these between them

Not os.cpu_count(): under taskset, a container's cpuset or a scheduler's allocation the process may use fewer
cores than the machine has, and a thread count sized to the machine oversubscribes the ones it got.
"""

from __future__ import annotations

import os


def usable_cores() -> list[int]:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))
