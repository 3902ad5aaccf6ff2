"""`GET /metrics`: Prometheus' text format, with Text Generation Inference's metric names, so that dashboards and
alerts written for TGI (its Grafana board reads `tgi_request_count`, `tgi_request_duration`, `tgi_queue_size`,
`tgi_batch_current_size`, ...) work unchanged; plus the time to first token, and the engine's own gauges and counters
(batch, queue, decode steps, prefix cache), prefixed `tgi_` too.

Every request of every front end (TGI's routes, OpenAI's, the WebSocket) is `track`ed when it is submitted; it is
counted once it has finished, at the next `track` or scrape, from what it recorded itself (`started`,
`streamer.first_token_at`, `finished_at`), so nothing here runs on the engine's thread.
"""

from __future__ import annotations

import threading

# Upper bounds of the histogram buckets (TGI's are exponential too).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TOKEN_BUCKETS = tuple(2.0**i for i in range(14))  # 1 .. 8192


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]):
        self.name, self.help, self.buckets = name, help_text, buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float):
        self.sum += value
        self.count += 1
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1

    def lines(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        out += [f'{self.name}_bucket{{le="{_number(b)}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out += [f'{self.name}_bucket{{le="+Inf"}} {self.count}', f"{self.name}_sum {_number(self.sum)}",
                f"{self.name}_count {self.count}"]
        return out


class ServerMetrics:
    """TGI's request metrics, kept by the server (the engine keeps its own gauges)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._pending: list = []  # tracked generations not yet counted
        self.request_count = 0
        self.request_success = 0
        self.request_failure: dict[str, int] = {}
        self.histograms = {
            name: Histogram(f"tgi_{name}", help_text, buckets)
            for name, help_text, buckets in (
                ("request_duration", "Seconds from a request's arrival to its last token", DURATION_BUCKETS),
                ("request_first_token_duration", ("Time to first token: seconds from a request's arrival to its "
                 "first generated token"), DURATION_BUCKETS),
                ("request_inference_duration", "Seconds from a request's first generated token to its last",
                 DURATION_BUCKETS),
                ("request_mean_time_per_token_duration", "Mean seconds per generated token after the first",
                 DURATION_BUCKETS),
                ("request_input_length", "Prompt tokens per request", TOKEN_BUCKETS),
                ("request_max_new_tokens", "max_new_tokens per request", TOKEN_BUCKETS),
                ("request_generated_tokens", "Generated tokens per request", TOKEN_BUCKETS),
            )
        }

    def track(self, generation) -> None:
        """Count `generation` (a `textgen.Generation` or `BatchedGeneration`) once it has finished."""
        with self._lock:
            self.request_count += 1
            self._pending.append(generation)
            self._harvest()

    def failure(self, kind: str) -> None:
        """A request refused before it was computed (`validation`, `overloaded`, `unauthorized`)."""
        with self._lock:
            self.request_count += 1
            self.request_failure[kind] = self.request_failure.get(kind, 0) + 1

    def _harvest(self):  # under the lock
        still = []
        for generation in self._pending:
            if not generation.done.is_set() or generation.finished_at is None:
                still.append(generation)
                continue
            if generation.state == "failed":
                self.request_failure["generation"] = self.request_failure.get("generation", 0) + 1
            elif generation.state == "cancelled":
                self.request_failure["cancelled"] = self.request_failure.get("cancelled", 0) + 1
            else:
                self.request_success += 1
            h = self.histograms
            h["request_duration"].observe(generation.finished_at - generation.started)
            h["request_input_length"].observe(len(generation.input_ids))
            h["request_max_new_tokens"].observe(generation.params.max_new_tokens)
            generated = len(generation.streamer.token_ids)
            h["request_generated_tokens"].observe(generated)
            first = generation.streamer.first_token_at
            if first is not None:
                h["request_first_token_duration"].observe(first - generation.started)
                h["request_inference_duration"].observe(generation.finished_at - first)
                if generated > 1:
                    h["request_mean_time_per_token_duration"].observe((generation.finished_at - first) / (generated - 1))
        self._pending = still

    def render(self, gauges: dict) -> str:
        """Prometheus text: TGI's request metrics, then `gauges` (the engine's values) as `tgi_<name>`; a name ending
        in `_total` is a counter."""
        with self._lock:
            self._harvest()
            lines = ["# HELP tgi_request_count Requests received", "# TYPE tgi_request_count counter",
                     f"tgi_request_count {self.request_count}",
                     "# HELP tgi_request_success Requests that finished", "# TYPE tgi_request_success counter",
                     f"tgi_request_success {self.request_success}",
                     "# HELP tgi_request_failure Requests that failed or were refused, by reason",
                     "# TYPE tgi_request_failure counter"]
            lines += [f'tgi_request_failure{{err="{kind}"}} {n}' for kind, n in sorted(self.request_failure.items())]
            for histogram in self.histograms.values():
                lines += histogram.lines()
        for name, value in gauges.items():
            kind = "counter" if name.endswith("_total") else "gauge"
            lines += [f"# TYPE tgi_{name} {kind}", f"tgi_{name} {value}"]
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return repr(float(value))
