"""The ``http`` sink: POST batches of records as a JSON array to an http(s) endpoint.

Body: ``[record, record, ...]`` (each record exactly as produced), ``Content-Type:
application/json``, plus headers ``X-LQ-Topic`` and ``X-LQ-Offsets: FIRST-LAST`` so a receiver
can drop a batch it has already stored (delivery is at least once).

Answers: 2xx is delivered. Connection errors, timeouts, 408, 429 and 5xx are retried with
exponential backoff (a :func:`~lq_logging.sinks.pause`, so a runner asked to stop does
not wait for it: ``write`` raises :class:`~lq_logging.sinks.Interrupted`); when they keep
failing, ``write`` raises and the runner stops the pipeline without committing. A request in
flight is not cut short: it ends within ``timeout``. 401, 403, 404, 405 and 407 mean the
sink is misconfigured and are raised the same way (never dead-lettered). Any other 4xx
rejects records for good: a batch is split into single records so only the refused ones are
:class:`Rejected` (dead-lettered with the status and the start of the answer).
"""

from __future__ import annotations

import http.client
import json
import random

from lq_logging.sinks import Entry, Interrupted, Rejected, pause
from sdk.connections import Route

RETRY_STATUSES = frozenset({408, 425, 429})
CONFIG_STATUSES = frozenset({401, 403, 404, 405, 407})


class HTTPDeliveryError(Exception):
    """The endpoint kept failing (or is misconfigured); nothing was rejected for good."""


class HTTPSink:
    """POSTs each batch as one JSON array.

    Args:
        url: the endpoint (``http://`` or ``https://``).
        headers: extra headers (e.g. ``{"Authorization": "Bearer ..."}``).
        timeout: seconds per request (connect and read).
        retries: how many times a failed request is sent again.
        backoff: the first pause in seconds, doubled per retry (with jitter) up to
            ``backoff_max``.
        verify: TLS verification (``False`` or a CA bundle path).
    """

    def __init__(self, url: str, headers: dict[str, str] | None = None, timeout: float = 10.0,
                 retries: int = 4, backoff: float = 0.2, backoff_max: float = 5.0,
                 verify: bool | str = True) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"not an http(s) url: {url!r}")
        self.url = url
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.backoff_max = float(backoff_max)
        # The SDK's kept-alive connections (sdk/connections.py): one HTTP stack for the project.
        self.route = Route(url, verify=verify, maxsize=1)
        self.headers = {"Content-Type": "application/json", "User-Agent": "logqueue-runner/0.1",
                        **(headers or {})}

    def write(self, batch: list[Entry]) -> None:
        if not batch:
            return
        status, text = self._post(batch)
        if status < 300:
            return
        if len(batch) == 1:
            raise Rejected([(batch[0], f"http: HTTP {status}: {text}")])
        rejects: list[tuple[Entry, str]] = []
        for entry in batch:
            status, text = self._post([entry])
            if status >= 300:
                rejects.append((entry, f"http: HTTP {status}: {text}"))
        if rejects:
            raise Rejected(rejects)

    def _post(self, batch: list[Entry]) -> tuple[int, str]:
        """POST once, retrying transient failures; return (status, start of the body) for a
        2xx or a permanent 4xx; raise :class:`HTTPDeliveryError` otherwise."""
        body = json.dumps([entry.record for entry in batch], ensure_ascii=False,
                          separators=(",", ":"), default=repr).encode("utf-8")
        headers = {**self.headers, "X-LQ-Topic": batch[0].topic,
                   "X-LQ-Offsets": f"{batch[0].offset}-{batch[-1].offset}"}
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                step = min(self.backoff_max, self.backoff * 2 ** (attempt - 1))
                try:
                    pause(step / 2 + random.uniform(0, step / 2))
                except Interrupted as exc:
                    raise Interrupted(f"POST {self.url}: {problem}") from exc
            try:
                status, data = self.route.send("POST", "", body, headers,
                                               (self.timeout, self.timeout))
            except (OSError, http.client.HTTPException, ValueError) as exc:
                problem = f"{type(exc).__name__}: {exc}"  # ValueError: a header HTTP refuses
                continue
            text = " ".join(data[:200].decode("utf-8", "replace").split())
            if status < 300:
                return status, text
            if status in CONFIG_STATUSES:
                raise HTTPDeliveryError(f"POST {self.url}: HTTP {status} (check the url and "
                                        f"credentials): {text}")
            if status >= 500 or status in RETRY_STATUSES:
                problem = f"HTTP {status}: {text}"
                continue
            if 400 <= status < 500:
                return status, text
            problem = f"unexpected HTTP {status}: {text}"
        raise HTTPDeliveryError(f"POST {self.url} failed {self.retries + 1} times: {problem}")

    def flush(self) -> None:
        """Nothing to do: ``write`` returns once the endpoint answered."""

    def close(self) -> None:
        self.route.close()

    def __repr__(self) -> str:
        return f"HTTPSink({self.url!r})"

