"""HTTP transport: the only SDK module that imports :mod:`requests`.

A :class:`Transport` owns one pooled :class:`requests.Session` and sends every call of one
client: JSON bodies for POST, query parameters for GET, a ``(connect, read)`` timeout on every
request (the read timeout grows with a long-poll's ``wait``), token auth, retries with
exponential backoff and jitter, and failover between several broker urls.

Retries. Only failures where the broker did not give an answer are retried: connection errors,
timeouts and 5xx statuses (the broker's 503 ``unavailable`` when its database is down, a proxy's
502/504, a 500). A 4xx is the caller's problem and is raised at once. Retrying a produce is safe
because the SDK's producer sends every batch with a ``seq``: the broker appends a repeated seq
once.

Failover. The transport is *sticky*: every request goes to the url that worked last. When a
request to it fails, the transport moves to the next url and retries there at once; it pauses
(backoff) only when every url has failed since the last pause. Several threads agree on the
current url: a thread only moves it on from the url it saw fail.

Threading contract. One :class:`Transport` may be shared by any number of threads. The
``requests.Session`` (its connection pool, default headers and auth) is shared and never
mutated once opened; everything that varies per request (url, parameters, body,
timeout) is passed per call, so no per-request state lives on the session. The connection
pool holds ``pool_maxsize`` connections per broker; more concurrent threads still work, with
extra connections opened and closed as needed.

Fork. A forked child may go on using a transport it inherited. In the child, the parent's
session is dropped (its pooled sockets are the parent's connections: the child never sends
on them, and dropping them closes only the child's copies), and the child's first request
opens a session of its own. The transport's lock is new in the child too, as a thread of the
parent may have held it at the fork.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import weakref
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from sdk.contract import DEFAULT_URL, check_url
from sdk.exceptions import (
    BrokerUnavailable,
    LogQueueError,
    ProtocolError,
    UnencodableRequest,
    error_from_response,
)

USER_AGENT = "logqueue-sdk/0.1"

#: requests exceptions meaning "no usable answer": retried, and the next url is tried.
_RETRYABLE = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


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


_JSON_HEADERS = {"Content-Type": "application/json"}
_GZIP_JSON_HEADERS = {**_JSON_HEADERS, "Content-Encoding": "gzip"}
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
        pool_maxsize: connections kept per broker.
        verify: how to check an ``https://`` broker's certificate: a CA file, ``False`` to
            skip the check, or ``True`` for the system's CAs (see :func:`parse_verify`).
        trust_env: read proxies, ``.netrc`` and CA bundles from the environment, as
            ``requests`` does by default. Off by default: a log shipper should not be routed
            through a proxy by a stray ``HTTP_PROXY``, and the environment scan costs about a
            quarter of the client's CPU per request.
        compress: gzip request bodies over 4 KiB (batches of log records shrink several
            times) and take compressed replies (``requests`` asks for gzip and inflates it).
            ``False`` sends and asks for plain bodies: less CPU, more bytes.

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, urls: str | Sequence[str] = DEFAULT_URL, *, token: str | None = None,
                 connect_timeout: float = 3.05, read_timeout: float = 10.0, retries: int = 5,
                 backoff: float = 0.1, backoff_max: float = 2.0, pool_maxsize: int = 32,
                 verify: bool | str | None = True, trust_env: bool = False,
                 compress: bool = True) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.urls: tuple[str, ...] = parse_urls(urls)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.retries = retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self._token = token
        self._pool_maxsize = pool_maxsize
        self._trust_env = trust_env
        self.compress = compress
        self._verify = parse_verify(verify)
        self._active = 0
        self._lock = threading.Lock()
        self._closed = False
        self._session: requests.Session | None = self._new_session()
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
        if params:
            params = {k: v for k, v in params.items() if v is not None}
        is_get = method.upper() == "GET"
        query, body = (params, None) if is_get else (None, _json_body(method, path, params))
        headers = None if body is None else _JSON_HEADERS
        if body is not None and self.compress and len(body) > COMPRESS_ABOVE:
            body, headers = _gzip(body), _GZIP_JSON_HEADERS
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
            answer = self._send(method, self.urls[index], path, query, (body, headers), timeout)
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
        if self._session is not None:
            self._session.close()

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Transport(urls={list(self.urls)!r}, active={self.url!r})"

    # -- internals ----------------------------------------------------------------------

    def _send(self, method: str, url: str, path: str, query: Mapping[str, Any] | None,
              payload: tuple[bytes | None, Mapping[str, str] | None],
              timeout: tuple[float, float]) -> dict[str, Any] | LogQueueError:
        """Send once to ``url`` the (body, headers) ``payload``: the success body, or the error
        to retry elsewhere (no answer, or a 5xx). Raise what no retry can mend (a 4xx, a
        request that cannot be built)."""
        session = self._session or self._open_session()
        body, headers = payload
        try:
            resp = session.request(method, url + path, params=query, data=body,
                                   headers=headers, timeout=timeout)
        except _RETRYABLE as exc:
            error = BrokerUnavailable(f"{method} {url}{path}: {type(exc).__name__}: {exc}",
                                      status=None)
            error.__cause__ = exc
            return error
        except UnicodeError as exc:  # a query value or the token that cannot be encoded
            raise UnencodableRequest(f"{method} {path}: cannot encode the request: {exc}") from exc
        except requests.RequestException as exc:
            raise LogQueueError(f"{method} {url}{path}: {exc}", code="client_error") from exc
        if resp.status_code < 500:
            return _decode(resp)
        return _decode_failure(resp)

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = self._trust_env
        session.verify = self._verify
        adapter = HTTPAdapter(pool_connections=len(self.urls), pool_maxsize=self._pool_maxsize)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers["User-Agent"] = USER_AGENT
        if not self.compress:
            session.headers["Accept-Encoding"] = "identity"
        if self._token:
            session.headers["Authorization"] = f"Bearer {self._token}"
        return session

    def _open_session(self) -> requests.Session:
        """The session of this process, opened on first use after a fork."""
        with self._lock:
            if self._session is None:
                self._session = self._new_session()
            return self._session

    def _after_fork(self) -> None:
        """In a forked child: forget the parent's session and lock (see the module docstring)."""
        self._lock = threading.Lock()
        self._session = None

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


def _json_body(method: str, path: str, params: Mapping[str, Any] | None) -> bytes:
    """``params`` as a compact UTF-8 JSON body, or :class:`UnencodableRequest`."""
    try:
        # UTF-8 as is, not \uXXXX escapes: bodies stay at the size the broker limits count.
        return json.dumps(params or {}, ensure_ascii=False,
                          separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError: a lone surrogate
        raise UnencodableRequest(f"{method} {path}: cannot encode the request as UTF-8 JSON: "
                                 f"{exc}") from exc


def _gzip(body: bytes) -> bytes:
    deflater = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # 31: the gzip format
    return deflater.compress(body) + deflater.flush()


def _body(resp: requests.Response) -> dict[str, Any] | None:
    try:
        body = json.loads(resp.content)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _decode(resp: requests.Response) -> dict[str, Any]:
    """The success body of a non-5xx answer, or raise the matching exception."""
    body = _body(resp)
    if body is None:
        raise ProtocolError(f"HTTP {resp.status_code} from {resp.url}: not a JSON object: "
                            f"{resp.text[:200]!r}", status=resp.status_code)
    if resp.status_code == 200 and body.get("status") == "success":
        return body
    raise error_from_response(resp.status_code, body)


def _decode_failure(resp: requests.Response) -> LogQueueError:
    """The exception for a 5xx answer (JSON or not)."""
    body = _body(resp)
    if body is None:
        return BrokerUnavailable(f"HTTP {resp.status_code} from {resp.url}",
                                 status=resp.status_code)
    return error_from_response(resp.status_code, body)


__all__ = ["Transport", "normalize_url", "parse_urls", "parse_verify"]
