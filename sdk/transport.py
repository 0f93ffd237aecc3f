"""HTTP transport: the only SDK module that talks HTTP.

A :class:`Transport` owns kept-alive connections to each broker url (:mod:`sdk.connections`,
on the standard library's http.client) and sends every call of one client: JSON bodies for
POST, query parameters for GET, a ``(connect, read)`` timeout on every request (the read
timeout grows with a long-poll's ``wait``), token auth, retries with exponential backoff and
jitter, and failover between several broker urls.

Retries. Only failures where the broker did not give an answer are retried: connection errors,
timeouts and 5xx statuses (the broker's 503 ``unavailable`` when its database is down, a proxy's
502/504, a 500). A 4xx is the caller's problem and is raised at once. Retrying a produce is safe
because the SDK's producer sends every batch with a ``seq``: the broker appends a repeated seq
once.

Failover. The transport is *sticky*: every request goes to the url that worked last. When a
request to it fails, the transport moves to the next url and retries there at once; it pauses
(backoff) only when every url has failed since the last pause. Several threads agree on the
current url: a thread only moves it on from the url it saw fail.

Threading contract. One :class:`Transport` may be shared by any number of threads. Its
connection pools (one per url) hand each request a connection of its own; the headers it
sends are built once and never mutated; everything that varies per request (url, parameters,
body, timeout) is passed per call. Each pool keeps ``pool_maxsize`` idle connections per
broker; more concurrent threads still work, with extra connections opened and closed as
needed.

Fork. A forked child may go on using a transport it inherited. In the child, the parent's
pools are dropped (their sockets are the parent's connections: the child never sends on
them, and dropping them closes only the child's copies), and the child's first request
opens connections of its own. The transport's lock is new in the child too, as a thread of
the parent may have held it at the fork.
"""

from __future__ import annotations

import http.client
import os
import random
import threading
import time
import weakref
import zlib
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import orjson

from sdk.connections import Route, accept_encoding
from sdk.contract import DEFAULT_URL, check_url
from sdk.exceptions import (
    BrokerUnavailable,
    LogQueueError,
    ProtocolError,
    UnencodableRequest,
    error_from_response,
)

USER_AGENT = "logqueue-sdk/0.1"

#: Exceptions meaning "no usable answer" (refused, reset, closed, timed out, TLS refused, a
#: reply cut short): retried, and the next url is tried.
_RETRYABLE = (OSError, http.client.HTTPException)


def normalize_url(url: str) -> str:
    """Return ``url`` with a scheme (``http://`` when none) and no trailing slash.

    >>> normalize_url("localhost:5000")
    'http://localhost:5000'
    """
    url = check_url(url).strip()  # refuses e.g. "http//host:5000" instead of looking up "http"
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


def parse_verify(value: bool | str | None) -> bool | str:
    """What ``verify=`` / ``--cacert`` / ``LQ_CACERT`` mean: a CA file (or directory) that
    signs the broker's certificate, ``False`` (or ``"false"``) to skip the check, and
    ``True``, ``None`` or ``""`` for the system's CAs.

    Raises:
        ValueError: a path that does not exist.
    """
    if value is None or value is True or value == "":
        return True
    if value is False or str(value).strip().lower() in ("false", "0", "no", "off"):
        return False
    path = os.path.expanduser(str(value))
    if not os.path.exists(path):
        raise ValueError(f"no CA file or directory at {path!r}")
    return path


def parse_urls(urls: str | Sequence[str]) -> tuple[str, ...]:
    """Normalize one url, a comma-separated string of urls, or a sequence of urls."""
    if isinstance(urls, str):
        urls = urls.split(",")
    parsed = tuple(normalize_url(u) for u in urls if u and u.strip())
    if not parsed:
        raise ValueError("at least one broker url is required")
    return parsed


#: Request bodies above this many bytes go gzipped (when ``compress``); smaller ones would
#: gain a few bytes for a header and the CPU.
COMPRESS_ABOVE = 4096
GZIP_LEVEL = 1  # the fastest: a batch of log records shrinks 6x (7x at level 6, for 2.5x the CPU)

#: SDK objects with per-process state (transports, producers, consumers): each one's
#: ``_after_fork()`` runs in a forked child. One hook for the whole SDK.
_FORK_AWARE: weakref.WeakSet[Any] = weakref.WeakSet()


def reset_after_fork(obj: Any) -> None:
    """Have ``obj._after_fork()`` called in every forked child while ``obj`` lives."""
    _FORK_AWARE.add(obj)


def _after_fork_in_child() -> None:
    for obj in list(_FORK_AWARE):
        obj._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Transport:
    """Sends requests to one of several brokers, with retries, failover and timeouts.

    Args:
        urls: one broker url, a comma-separated string, or a sequence; the scheme is optional
            (``"localhost:5000"``).
        token: sent as ``Authorization: Bearer <token>`` when the broker requires one.
        connect_timeout: seconds to open a connection.
        read_timeout: seconds to wait for an answer, on top of any long-poll ``wait``.
        retries: how many times a failed request is sent again (to the next url first).
        backoff: the first pause, in seconds, once every url has failed; doubled each time.
        backoff_max: the largest pause.
        pool_maxsize: idle connections kept per broker.
        verify: how to check an ``https://`` broker's certificate: a CA file or directory,
            ``False`` to skip the check, or ``True`` for the system's CAs (see
            :func:`parse_verify`).
        trust_env: take a proxy (``HTTP_PROXY``, ``HTTPS_PROXY``, ``NO_PROXY``) and, with
            ``verify=True``, a CA bundle (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``) from
            the environment. Off by default: a log shipper should not be routed through a
            proxy by a stray ``HTTP_PROXY``.
        compress: ``True``: gzip request bodies over 4 KiB (batches of log records shrink
            several times) and take compressed replies (zstd when the ``zstandard`` package
            is importable, else gzip). ``False`` sends and asks for plain bodies: less CPU,
            more bytes. ``None`` (the default): as ``True``, except that a broker on a
            loopback address (``localhost``, 127.0.0.0/8, ``::1``, reached without a proxy)
            sends its replies plain: there, compressing a fetch of 1,000 log records cost the
            broker more CPU (0.2-0.6 ms) than the bytes it saved, and inflating it the client.

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, urls: str | Sequence[str] = DEFAULT_URL, *, token: str | None = None,
                 connect_timeout: float = 3.05, read_timeout: float = 10.0, retries: int = 5,
                 backoff: float = 0.1, backoff_max: float = 2.0, pool_maxsize: int = 32,
                 verify: bool | str | None = True, trust_env: bool = False,
                 compress: bool | None = None) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.urls: tuple[str, ...] = parse_urls(urls)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.retries = retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self._pool_maxsize = pool_maxsize
        self._trust_env = trust_env
        self.compress = compress
        self._verify = parse_verify(verify)
        self._active = 0
        self._lock = threading.Lock()
        self._closed = False
        routes = self._new_routes()
        self._routes: tuple[Route, ...] | None = routes
        sets = {False: _headers(token, None)[0]}
        sets[True], self._unsendable = _headers(token, accept_encoding())
        #: Per url, the header sets to send with: compressed replies asked for or not.
        self._headers = tuple(sets[self._compressed_replies(route)] for route in routes)
        reset_after_fork(self)

    # -- public -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The broker url requests currently go to."""
        return self.urls[self._active]

    def get(self, path: str, params: Mapping[str, Any] | None = None, *,
            wait: float = 0.0) -> dict[str, Any]:
        """GET ``path`` with ``params`` as the query string; see :meth:`request`."""
        return self.request("GET", path, params, wait=wait)

    def post(self, path: str, params: Mapping[str, Any] | None = None, *,
             wait: float = 0.0) -> dict[str, Any]:
        """POST ``params`` as a JSON body to ``path``; see :meth:`request`."""
        return self.request("POST", path, params, wait=wait)

    def request(self, method: str, path: str, params: Mapping[str, Any] | None = None, *,
                wait: float = 0.0, retry: bool = True) -> dict[str, Any]:
        """Send one request and return the decoded success body.

        Args:
            method: ``"GET"`` (params in the query string) or any other method (JSON body).
            path: e.g. ``"/producer/produce"``.
            params: the request's fields; ``None`` values are left out.
            wait: the long-poll time the broker may hold the request, in seconds; added to
                the read timeout.
            retry: ``False`` sends once (no retry, no failover).

        Raises:
            BrokerUnavailable: no broker answered (after every retry), or the last answer was
                a 502, 503 or 504. (A 500 is a broker bug: :class:`InternalError`.)
            UnencodableRequest: the request cannot be encoded (a lone surrogate, a value
                JSON cannot hold, a token that is not Latin-1); nothing was sent.
            LogQueueError: the subclass for the broker's ``error`` code on a 4xx; its root
                for any other failure of the request (``code="client_error"``).
        """
        if self._closed:
            raise LogQueueError("the transport is closed", code="closed")
        if self._unsendable is not None:
            raise UnencodableRequest(f"{method} {path}: {self._unsendable}")
        if params:
            params = {k: v for k, v in params.items() if v is not None}
        target, body, headers = self._encode(method, path, params)
        timeout = (self.connect_timeout, self.read_timeout + max(wait, 0.0))
        failed: set[int] = set()
        pauses = 0
        attempt = 0
        while True:
            index = self._active
            if index in failed:  # every url tried since the last pause has failed
                time.sleep(self._delay(pauses))
                pauses += 1
                failed.clear()
            answer = self._send(method, index, target, (body, headers), timeout)
            if not isinstance(answer, LogQueueError):
                return answer
            failed.add(index)
            self._fail_over(index)
            attempt += 1
            if not retry or attempt > self.retries:
                raise answer

    def close(self) -> None:
        """Close the pooled connections. Idempotent."""
        self._closed = True
        _FORK_AWARE.discard(self)
        for route in self._routes or ():
            route.close()

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Transport(urls={list(self.urls)!r}, active={self.url!r})"

    # -- internals ----------------------------------------------------------------------

    def _compressed_replies(self, route: Route) -> bool:
        """Whether to ask ``route``'s broker for compressed replies (see ``compress``)."""
        return self.compress is not False and not (self.compress is None and route.loopback)

    def _encode(self, method: str, path: str, params: Mapping[str, Any] | None
                ) -> tuple[str, bytes | None, str]:
        """The request target, body and kind of headers, or :class:`UnencodableRequest`."""
        if method.upper() != "GET":
            body = _json_body(method, path, params)
            if self.compress is not False and len(body) > COMPRESS_ABOVE:
                return path, _gzip(body), "gzip"
            return path, body, "json"
        if not params:
            return path, None, "get"
        try:
            return f"{path}?{urlencode(params, doseq=True)}", None, "get"
        except UnicodeError as exc:  # a lone surrogate in a value
            raise UnencodableRequest(f"{method} {path}: cannot encode the request: "
                                     f"{exc}") from exc

    def _send(self, method: str, index: int, target: str, payload: tuple[bytes | None, str],
              timeout: tuple[float, float]) -> dict[str, Any] | LogQueueError:
        """Send once to url ``index`` the (body, kind of headers) ``payload``: the success body, or
        the error to retry elsewhere (no answer, or a 5xx). Raise what no retry can mend (a
        4xx, a request that cannot be built, a reply that cannot be inflated)."""
        url = self.urls[index]
        route = (self._routes or self._open_routes())[index]
        try:
            status, data = route.send(method, target, payload[0],
                                      self._headers[index][payload[1]], timeout)
        except _RETRYABLE as exc:
            error = BrokerUnavailable(f"{method} {url}{target}: {type(exc).__name__}: {exc}",
                                      status=None)
            error.__cause__ = exc
            return error
        except UnicodeError as exc:  # the target or a header that HTTP cannot carry
            raise UnencodableRequest(f"{method} {target}: cannot encode the request: "
                                     f"{exc}") from exc
        except zlib.error as exc:
            raise LogQueueError(f"{method} {url}{target}: the reply cannot be inflated: {exc}",
                                code="client_error") from exc
        where = f"{url}{target}"
        if status < 500:
            return _decode(status, data, where)
        return _decode_failure(status, data, where)

    def _new_routes(self) -> tuple[Route, ...]:
        return tuple(Route(url, verify=self._verify, trust_env=self._trust_env,
                           maxsize=self._pool_maxsize) for url in self.urls)

    def _open_routes(self) -> tuple[Route, ...]:
        """The pools of this process, opened on first use after a fork."""
        with self._lock:
            if self._routes is None:
                self._routes = self._new_routes()
            return self._routes

    def _after_fork(self) -> None:
        """In a forked child: forget the parent's pools and lock (see the module docstring)."""
        self._lock = threading.Lock()
        self._routes = None

    def _fail_over(self, index: int) -> None:
        """Move to the url after ``index``, unless another thread already moved on."""
        if len(self.urls) > 1:
            with self._lock:
                if self._active == index:
                    self._active = (index + 1) % len(self.urls)

    def _delay(self, pauses: int) -> float:
        """Exponential backoff with "equal jitter": between half and all of the step."""
        step = min(self.backoff_max, self.backoff * (2 ** pauses))
        return step / 2 + random.uniform(0, step / 2)


def _headers(token: str | None, accept: str | None
             ) -> tuple[dict[str, dict[str, str]], str | None]:
    """The three header sets requests are sent with (GET, JSON body, gzipped JSON body), built
    once, asking for replies in the ``accept`` codings (None: plain); and why the token
    cannot be sent, if it cannot (HTTP headers are Latin-1, one line)."""
    base = {"User-Agent": USER_AGENT, "Accept-Encoding": accept or "identity"}
    unsendable = None
    if token:
        value = f"Bearer {token}"
        try:
            value.encode("latin-1")
        except UnicodeError as exc:
            unsendable = f"the token cannot be sent in an HTTP header: {exc}"
        if "\r" in value or "\n" in value:
            unsendable = "the token cannot be sent in an HTTP header: it holds a line break"
        base["Authorization"] = value
    json_headers = {**base, "Content-Type": "application/json"}
    return {"get": base, "json": json_headers,
            "gzip": {**json_headers, "Content-Encoding": "gzip"}}, unsendable


def _json_body(method: str, path: str, params: Mapping[str, Any] | None) -> bytes:
    """``params`` as a compact UTF-8 JSON body, or :class:`UnencodableRequest`."""
    try:
        # UTF-8 as is, not \uXXXX escapes: bodies stay at the size the broker limits count.
        return orjson.dumps(params or {})
    except TypeError as exc:  # orjson.JSONEncodeError: a lone surrogate, bytes, a huge int
        raise UnencodableRequest(f"{method} {path}: cannot encode the request as UTF-8 JSON: "
                                 f"{exc}") from exc


def _gzip(body: bytes) -> bytes:
    deflater = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # 31: the gzip format
    return deflater.compress(body) + deflater.flush()


def _body(data: bytes) -> dict[str, Any] | None:
    try:
        body = orjson.loads(data)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _decode(status: int, data: bytes, where: str) -> dict[str, Any]:
    """The success body of a non-5xx answer, or raise the matching exception."""
    body = _body(data)
    if body is None:
        text = data[:200].decode("utf-8", "replace")
        raise ProtocolError(f"HTTP {status} from {where}: not a JSON object: {text!r}",
                            status=status)
    if status == 200 and body.get("status") == "success":
        return body
    raise error_from_response(status, body)


def _decode_failure(status: int, data: bytes, where: str) -> LogQueueError:
    """The exception for a 5xx answer (JSON or not)."""
    body = _body(data)
    if body is None:
        return BrokerUnavailable(f"HTTP {status} from {where}", status=status)
    return error_from_response(status, body)


__all__ = ["Transport", "normalize_url", "parse_urls", "parse_verify"]
