"""Per-test timeouts sized from the machine (docs/testing.md).

`timeout` in pyproject.toml (pytest-timeout) bounds a test on an idle machine. A busy one runs every test slower
without anything hanging: a fresh clone's end-to-end tests once failed 13 times at a load of ~10 on 2 cores. So each
test gets that timeout times the machine's load per core when it starts (at least 1, at most `MAX_SCALE`), or
times `SAFEPRETRAIN_TEST_TIMEOUT_SCALE` when that is set (a machine known to be slow). A hung test still fails, after
at most `MAX_SCALE` times the timeout.
"""

from __future__ import annotations

import os

import pytest
import pytest_timeout

SCALE_ENV = "SAFEPRETRAIN_TEST_TIMEOUT_SCALE"
MAX_SCALE = 8.0  # a hang is still caught within 8 x 420 s; a load of 8 per core is beyond what the suite needs


def timeout_scale() -> float:
    """The factor on the configured timeout: SAFEPRETRAIN_TEST_TIMEOUT_SCALE, else the 1- and 5-minute load average
    (the higher: a burst that just began or just ended) per CPU this process may use, within [1, MAX_SCALE]."""
    fixed = os.environ.get(SCALE_ENV, "").strip()
    if fixed:
        try:
            value = float(fixed)
        except ValueError:
            value = 0.0
        if not value > 0:
            raise pytest.UsageError(f"{SCALE_ENV}={fixed!r} is not a positive number; set it to a factor such as 3, "
                                    "or unset it to scale by the machine's load")
        return value
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load = max(os.getloadavg()[:2])
    return min(MAX_SCALE, max(1.0, load / cores))


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item, settings):
    """pytest-timeout's own timer, with the timeout scaled when the test starts."""
    return pytest_timeout.pytest_timeout_set_timer(item, settings._replace(timeout=settings.timeout * timeout_scale()))
