"""The tests' slow-worker hook: stages pause before they publish, so that a test can kill,
cancel or stop a worker exactly there (outputs written in the work folder, none published).

In this process: `pause_before_publishing(seconds)` (undo with the returned function). In a
worker process: `python -m tests.mrictl.slow_publishing SECONDS mrictl-arguments...` runs the
real CLI with the pause in place. Production code has no hook for this.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from mrictl.pipeline.context import StageContext


def pause_before_publishing(seconds: float) -> Callable[[], None]:
    """Make each job's first publish wait `seconds`, checking for cancellation as it waits."""
    original = StageContext.publish

    def publish(self: StageContext, *args, **kwargs):
        if not getattr(self, "_paused", False):
            self._paused = True
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                self.check()
                time.sleep(0.05)
        return original(self, *args, **kwargs)

    StageContext.publish = publish

    def undo() -> None:
        StageContext.publish = original

    return undo


def main() -> None:
    seconds, arguments = float(sys.argv[1]), sys.argv[2:]
    pause_before_publishing(seconds)
    from mrictl.cli.main import main as mrictl_main

    sys.argv = ["mrictl", *arguments]
    mrictl_main()


if __name__ == "__main__":
    main()
