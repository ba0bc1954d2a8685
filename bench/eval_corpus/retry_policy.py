"""Retry policy for calls from the dispatch service to carrier APIs.

Carrier APIs are flaky, so every outbound call goes through `with_retries`.
"""

from __future__ import annotations

import random
import time

# Carrier calls are attempted at most 6 times in total before the job is parked.
MAX_ATTEMPTS = 6

# The first retry waits 2 seconds; each later one doubles, capped at 120 seconds.
BASE_DELAY_SECONDS = 2.0
MAX_DELAY_SECONDS = 120.0

# Parked jobs are retried by the night sweeper, which runs at 03:30 UTC.
NIGHT_SWEEP = "03:30"


def delay(attempt: int) -> float:
    """Seconds to wait before retry number `attempt`, with full jitter."""
    return random.uniform(0, min(MAX_DELAY_SECONDS, BASE_DELAY_SECONDS * 2**attempt))


def with_retries(call, attempts: int = MAX_ATTEMPTS):
    """Run `call` until it succeeds or the attempts run out."""
    for attempt in range(attempts):
        try:
            return call()
        except ConnectionError:
            if attempt == attempts - 1:
                raise
            time.sleep(delay(attempt))
