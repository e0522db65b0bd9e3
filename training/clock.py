"""One clock for every time budget in training and the experiments: seconds of *training*.

A budget (``max_minutes``, an experiment's ``--minutes``) counts the time spent training: loading
batches, forward and backward passes, optimizer steps. It does not count what happens inside
`TrainingClock.paused`: evaluation and checkpoint writing. Why: a learning curve is instrumentation,
so asking for one more often (or a slower evaluation set, or a slower disk) must not shorten the
training a budget buys, nor change the schedule the loop fits to it; and "minutes of training" then
means the same in `training.loop` and in every experiment that compares architectures by it.
"""

from __future__ import annotations

import contextlib
import time


class TrainingClock:
    """Training seconds since ``start``, plus ``before`` (the seconds a resumed run had already trained).

    Time inside ``with clock.paused():`` does not count; nested pauses count once.
    """

    def __init__(self, before: float = 0.0):
        self.before = float(before)
        self._start = time.monotonic()
        self._paused_s = 0.0
        self._pause_depth = 0
        self._pause_start = 0.0

    def elapsed(self) -> float:
        """Training seconds so far (a pause under way does not count either)."""
        now = self._pause_start if self._pause_depth else time.monotonic()
        return self.before + now - self._start - self._paused_s

    def minutes(self) -> float:
        return self.elapsed() / 60.0

    def over(self, max_minutes: float | None) -> bool:
        """True once a budget of ``max_minutes`` (None: no budget) is used up."""
        return max_minutes is not None and self.elapsed() > max_minutes * 60.0

    @contextlib.contextmanager
    def paused(self):
        """Evaluation and checkpoint writing run in here: their time is not training time."""
        if self._pause_depth == 0:
            self._pause_start = time.monotonic()
        self._pause_depth += 1
        try:
            yield self
        finally:
            self._pause_depth -= 1
            if self._pause_depth == 0:
                self._paused_s += time.monotonic() - self._pause_start
