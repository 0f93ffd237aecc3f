"""Kept-alive HTTP/1.1 connections to one url, on the standard library's http.client.

:mod:`sdk.transport` uses this module as its way onto the network (and lq_logging's HTTP
sink, to post to an endpoint of the user's): it is not a second HTTP client. Why http.client
and not ``requests`` or urllib3's pools: per one-message produce, measured in one run
(docs/profiles/README.md), ``requests`` spent about 1,300 µs of the client's CPU, urllib3's
pool about 700 and http.client about 360, for the same request on the same kept-alive
connection. Everything those libraries did for the SDK is here in a few lines: a pool of
kept-alive connections per url (LIFO, so the warmest is reused), TCP_NODELAY (http.client
sets it on connect), a connect timeout and a read timeout, TLS with the system's CAs, a CA
file or directory, or no check, proxies from the environment when asked, and compressed
replies (zstd when the ``zstandard`` package is importable, gzip, deflate).

A pooled connection the broker closed while it sat idle (gunicorn closes kept-alive
connections after a few seconds) is noticed before it is used, as readable-at-EOF, and
replaced: such a close is no reason to fail over to another broker.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import os
import select
import ssl
import threading
import urllib.request
import zlib
from collections.abc import Mapping
from functools import cache
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

#: What the client inflates without the ``zstandard`` package, for ``Accept-Encoding``.
ACCEPT_ENCODING = "gzip, deflate"
#: The same with it: a fetch of 1,000 log records compresses in about 200 µs with zstd and
#: 635 µs with gzip on the broker, and inflates in 50 µs against 200 here.
ACCEPT_ENCODING_ZSTD = "zstd, gzip, deflate"
#: CA bundles named by the environment, read when ``trust_env`` is on (as ``requests`` does).
CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")

Timeouts = tuple[float, float]  # (connect, read) in seconds
ONE_WRITE_BYTES = 64 * 1024  # bodies up to this size go in the same write as the head


class _OneWrite(http.client.HTTPConnection):
    """http.client writes a request's head and its body with two sends. Here a body of up to
    ONE_WRITE_BYTES goes in the head's send: the broker then reads the whole request at once
    (its worker thread never waits for the body's segment), and the client is not switched
    out between two sends. (`_send_output` and `_buffer` are http.client's own, unchanged
    since Python 3.6; anything else goes through them as it is.)"""

    def _send_output(self, message_body: object = None, encode_chunked: bool = False) -> None:
        buffer = getattr(self, "_buffer", None)
        if (isinstance(message_body, bytes) and not encode_chunked and buffer is not None
                and len(message_body) <= ONE_WRITE_BYTES):
            buffer.extend((b"", b""))
            head = b"\r\n".join(buffer)
            del buffer[:]
            self.send(head + message_body)
            return
        super()._send_output(message_body, encode_chunked)


class _OneWriteTLS(_OneWrite, http.client.HTTPSConnection):
    """The same over TLS."""


class Route:
    """Connections to one broker url, shared by any number of threads.

    Args:
        url: ``http://host:port[/prefix]`` or ``https://...`` (the HTTP sink of lq_logging
            posts to an endpoint's url, path and query included).
        verify: for https: ``True`` (the system's CAs), ``False`` (no check), or the path of
            a CA file or directory.
        trust_env: take a proxy (``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY``) and, with
            ``verify=True``, a CA bundle (``REQUESTS_CA_BUNDLE``) from the environment.
        maxsize: idle connections kept; more concurrent requests open more, closed after.
    """

    def __init__(self, url: str, *, verify: bool | str = True, trust_env: bool = False,
                 maxsize: int = 32) -> None:
        self.url = url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) broker url: {url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path + (f"?{parts.query}" if parts.query else "")
        self._maxsize = maxsize
        self._context = _ssl_context(verify, trust_env) if self._https else None
        self._proxy, self._proxy_auth = _proxy_for(parts) if trust_env else (None, {})
        # Through a proxy, plain http sends the whole url as the request target.
        self._absolute = url if self._proxy is not None and not self._https else ""
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        #: The broker is on this machine, reached directly (no proxy in between).
        self.loopback = self._proxy is None and is_loopback(self._host)

    def send(self, method: str, target: str, body: bytes | None, headers: Mapping[str, str],
             timeouts: Timeouts) -> tuple[int, bytes]:
        """Send one request (``target``: the path and query, after the url's own path) and
        return the status and the body, inflated.

        Raises:
            OSError, http.client.HTTPException: no usable answer (connection refused, reset
                or closed, a timeout, TLS refused): the caller may retry.
            UnicodeError: a header or the target that HTTP cannot carry; nothing was sent.
            zlib.error: a compressed reply that cannot be inflated.
        """
        target = (self._absolute or self._prefix) + target or "/"
        if self._absolute and self._proxy_auth:
            headers = {**headers, **self._proxy_auth}
        conn = self._take(timeouts[0])
        try:
            conn.sock.settimeout(timeouts[1])
            conn.request(method, target, body, headers)
            response = conn.getresponse()
            data = response.read()
        except BaseException:
            conn.close()
            raise
        if response.will_close:
            conn.close()
        else:
            self._give_back(conn)
        encoding = response.getheader("Content-Encoding")
        return response.status, _inflate(data, encoding) if encoding else data

    def close(self) -> None:
        """Close the idle connections (a request in flight closes its own when done)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _take(self, connect_timeout: float) -> http.client.HTTPConnection:
        """An idle kept-alive connection the broker has not closed, else a new one."""
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connect(connect_timeout)
            if conn.sock is not None and not _readable(conn.sock):
                return conn
            conn.close()  # closed by the broker while idle (or unread bytes): not reusable

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self._maxsize:
                self._idle.append(conn)
                return
        conn.close()

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        host, port = self._proxy or (self._host, self._port)
        conn: http.client.HTTPConnection
        if self._https:
            conn = _OneWriteTLS(host, port, timeout=timeout, context=self._context)
        else:
            conn = _OneWrite(host, port, timeout=timeout)
        if self._proxy is not None and self._https:
            conn.set_tunnel(self._host, self._port, headers=self._proxy_auth)
        conn.connect()  # TCP_NODELAY on (http.client sets it), then TLS
        return conn


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine: ``localhost`` (and its subdomains, RFC 6761),
    127.0.0.0/8 or ::1. A name that would need a DNS lookup is not taken as one."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name.partition("%")[0]).is_loopback
    except ValueError:
        return False


def accept_encoding() -> str:
    """What to ask compressed replies in: zstd first when it can be inflated here."""
    return ACCEPT_ENCODING_ZSTD if _zstandard() is not None else ACCEPT_ENCODING


@cache
def _zstandard() -> Any:
    """The ``zstandard`` module, or None without it (the ``zstd`` extra); imported once."""
    try:
        import zstandard
    except ImportError:
        return None
    return zstandard


def _readable(sock: object) -> bool:
    """Whether an idle connection has something to read: the broker closed it (EOF)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([sock], [], [], 0)[0])


def _ssl_context(verify: bool | str, trust_env: bool) -> ssl.SSLContext:
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if verify is True and trust_env:
        verify = next((os.environ[v] for v in CA_BUNDLE_VARIABLES if os.environ.get(v)), True)
    if verify is True:
        return ssl.create_default_context()
    if os.path.isdir(verify):
        return ssl.create_default_context(capath=verify)
    return ssl.create_default_context(cafile=verify)


def _proxy_for(parts: SplitResult) -> tuple[tuple[str, int] | None, dict[str, str]]:
    """The proxy the environment names for this url (unless NO_PROXY exempts its host), and
    the Proxy-Authorization header its user and password make."""
    proxy = urllib.request.getproxies_environment().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass_environment(parts.netloc):
        return None, {}
    found = urlsplit(proxy if "://" in proxy else "http://" + proxy)
    if not found.hostname:
        return None, {}
    auth = {}
    if found.username:
        secret = f"{unquote(found.username)}:{unquote(found.password or '')}".encode()
        auth["Proxy-Authorization"] = "Basic " + base64.b64encode(secret).decode("ascii")
    return (found.hostname, found.port or 80), auth


def _inflate(data: bytes, encoding: str) -> bytes:
    coding = encoding.strip().lower()
    if coding == "zstd" and _zstandard() is not None:
        inflater = _zstandard().ZstdDecompressor().decompressobj()  # takes a frame of any kind
        try:
            out = inflater.decompress(data)
        except _zstandard().ZstdError as exc:
            raise zlib.error(f"invalid zstd data: {exc}") from None
        if not inflater.eof:
            raise zlib.error("truncated zstd data")
        return out
    if coding in ("gzip", "x-gzip"):
        return zlib.decompress(data, 16 + zlib.MAX_WBITS)
    if coding == "deflate":
        try:
            return zlib.decompress(data)
        except zlib.error:  # raw deflate, as some servers send it
            return zlib.decompress(data, -zlib.MAX_WBITS)
    return data  # identity, or a coding we did not ask for: as it came
