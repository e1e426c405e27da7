"""What goes wrong in a sweep: a malformed definition, and a trial that failed on its own.

A sweep definition is refused before any trial runs (:class:`SweepConfigError`). A trial that
fails on its own, such as a diverged loss, stores why under the :data:`FAIL_REASON` user
attribute. A crashed or killed trial has no such attribute, and that is how the two are told apart.
"""

from __future__ import annotations

__all__ = ["FAIL_REASON", "SweepConfigError"]

#: Trial user attribute that holds why a trial failed on its own (a non-finite loss), not by a crash.
FAIL_REASON = "fail_reason"


class SweepConfigError(ValueError):
    """A sweep definition is malformed. The message names the offending key."""
