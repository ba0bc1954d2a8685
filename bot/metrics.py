"""What the engine has been doing, counted as its turns pass, in the Prometheus text format."""

from __future__ import annotations

import time
from collections import Counter

from bot.types import TurnDone

# Time-to-first-token histogram buckets, in seconds.
TTFT_BUCKETS = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0)


class Metrics:
    """Counters of turns: in flight, finished by status, tokens, time to first token."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self.active = 0
        self.turns: Counter[str] = Counter()
        self.completion_tokens = 0
        self.generation_seconds = 0.0
        self.ttft_buckets = [0] * len(TTFT_BUCKETS)
        self.ttft_sum = 0.0
        self.ttft_count = 0

    def started(self) -> None:
        """A user's message is stored and its answer is being generated."""
        self.active += 1

    def ended(self, done: TurnDone | None) -> None:
        """The answer of a started turn is over: `done`, or None when it failed."""
        self.active -= 1
        if done is None:
            self.turns["failed"] += 1
            return
        self.turns[done.status] += 1
        self.completion_tokens += done.usage.completion_tokens
        self.generation_seconds += done.usage.latency_ms / 1000
        if done.usage.first_token_ms is not None:
            seconds = done.usage.first_token_ms / 1000
            self.ttft_sum += seconds
            self.ttft_count += 1
            for i, bound in enumerate(TTFT_BUCKETS):
                if seconds <= bound:
                    self.ttft_buckets[i] += 1

    def render(self, model: str, queue: tuple[int, int] | None = None) -> str:
        """The Prometheus text exposition of these counters (and the model's queue, when known)."""
        lines = [
            "# HELP chinwag_info The model this process serves.",
            "# TYPE chinwag_info gauge",
            f'chinwag_info{{model="{_label(model)}"}} 1',
            "# HELP chinwag_uptime_seconds Seconds since the engine started.",
            "# TYPE chinwag_uptime_seconds gauge",
            f"chinwag_uptime_seconds {time.time() - self.started_at:.1f}",
            "# HELP chinwag_active_turns Answers being generated now.",
            "# TYPE chinwag_active_turns gauge",
            f"chinwag_active_turns {self.active}",
        ]
        if queue is not None:
            waiting, running = queue
            lines += [
                "# HELP chinwag_queue_length Requests waiting for a place in the model's batch.",
                "# TYPE chinwag_queue_length gauge",
                f"chinwag_queue_length {waiting}",
                "# HELP chinwag_batch_size Requests the model is generating together now.",
                "# TYPE chinwag_batch_size gauge",
                f"chinwag_batch_size {running}",
            ]
        lines += [
            "# HELP chinwag_turns_total Finished turns by status.",
            "# TYPE chinwag_turns_total counter",
        ]
        for status in (
            "complete",
            "interrupted",
            "failed",
            *sorted(set(self.turns) - {"complete", "interrupted", "failed"}),
        ):
            lines.append(f'chinwag_turns_total{{status="{_label(status)}"}} {self.turns[status]}')
        rate = self.completion_tokens / self.generation_seconds if self.generation_seconds else 0.0
        lines += [
            "# HELP chinwag_completion_tokens_total Tokens generated in answers.",
            "# TYPE chinwag_completion_tokens_total counter",
            f"chinwag_completion_tokens_total {self.completion_tokens}",
            "# HELP chinwag_generation_seconds_total Seconds spent generating answers.",
            "# TYPE chinwag_generation_seconds_total counter",
            f"chinwag_generation_seconds_total {self.generation_seconds:.3f}",
            "# HELP chinwag_tokens_per_second Tokens generated per second of answering, since start.",
            "# TYPE chinwag_tokens_per_second gauge",
            f"chinwag_tokens_per_second {rate:.2f}",
            "# HELP chinwag_time_to_first_token_seconds Time to the first token of an answer.",
            "# TYPE chinwag_time_to_first_token_seconds histogram",
        ]
        for bound, count in zip(TTFT_BUCKETS, self.ttft_buckets, strict=True):
            lines.append(f'chinwag_time_to_first_token_seconds_bucket{{le="{bound}"}} {count}')
        lines += [
            f'chinwag_time_to_first_token_seconds_bucket{{le="+Inf"}} {self.ttft_count}',
            f"chinwag_time_to_first_token_seconds_sum {self.ttft_sum:.3f}",
            f"chinwag_time_to_first_token_seconds_count {self.ttft_count}",
        ]
        return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
