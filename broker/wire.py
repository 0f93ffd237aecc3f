"""Bytes on the wire: request bodies read and inflated within the limits, replies compressed.

A compressed body's limit applies to its inflated size, checked while inflating: a first pass
counts the inflated bytes in chunks and throws them away, so a small body that inflates past
the limit is refused having held one chunk, never the whole; only a body known to fit is
inflated again, into a buffer of its exact size. `zstd` needs the `zstandard` package (the
`zstd` extra), imported on first use.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from typing import IO, Any

from werkzeug.exceptions import HTTPException

from .errors import BadRequest, BrokerError, TooLarge, UnsupportedEncoding

CHUNK = 256 * 1024  # bytes read or inflated at a time
MIN_COMPRESSED_REPLY = 1024  # smaller replies go as they are: compression would not pay
GZIP_LEVEL = 1  # log records shrink 6x at the fastest level (7x at 6, for 2.5x the CPU)
# A fetch of 1,000 log records (400 KB): level 1 took 200 us and 9.4 KB, level 3 300 us and
# 9.9 KB; gzip level 1 800 us and 19 KB (and 270 us to inflate against zstd's 100).
ZSTD_LEVEL = 1


def read_stream(stream: IO[bytes], limit: int) -> bytearray:
    """The whole body, or TooLarge as soon as it passes `limit` (a chunked body has no
    Content-Length to check first)."""
    body = bytearray()
    while chunk := stream.read(CHUNK):
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"the request body is over the limit of {limit} bytes")
    return body


def read_body(stream: IO[bytes], encoding: str, limit: int) -> bytes | bytearray:
    """A request's raw body, read and inflated from its Content-Encoding within `limit`. The
    server's body reader can fail on bad chunked encoding or a client that stops mid-body:
    that is the client's fault, a 400."""
    try:
        data = read_stream(stream, limit)
    except (HTTPException, BrokerError):
        raise
    except Exception as exc:  # noqa: BLE001 - gunicorn's parse errors share no base we may import
        raise BadRequest(f"the request body could not be read: {exc}"[:300]) from None
    return inflate(data, encoding, limit)


def inflate(data: bytes | bytearray, encoding: str, limit: int) -> bytes | bytearray:
    """`data` decoded from its Content-Encoding, once its inflated size is within `limit`."""
    chunks = _decoder(encoding)
    if chunks is None:
        return data
    total = 0
    for chunk in chunks(data):
        total += len(chunk)
        if total > limit:
            raise TooLarge(f"the request body inflates past the limit of {limit} bytes")
    body = bytearray(total)
    view = memoryview(body)
    start = 0
    for chunk in chunks(data):
        view[start:start + len(chunk)] = chunk
        start += len(chunk)
    return body


def _decoder(encoding: str) -> Callable[[bytes | bytearray], Iterator[bytes]] | None:
    coding = encoding.strip().lower()
    if coding in ("", "identity"):
        return None
    if coding in ("gzip", "x-gzip"):
        return _gunzip
    if coding == "zstd" and _zstandard() is not None:
        return _unzstd
    supported = "gzip, zstd" if _zstandard() is not None else "gzip"
    raise UnsupportedEncoding(f"Content-Encoding {encoding[:40]!r} is not supported "
                              f"(supported: {supported})")


def _gunzip(data: bytes | bytearray) -> Iterator[bytes]:
    """Inflate every gzip member of `data`, at most CHUNK bytes at a time."""
    pending: bytes | bytearray = data
    try:
        while pending:
            inflater = zlib.decompressobj(wbits=31)
            while not inflater.eof:
                out = inflater.decompress(pending, CHUNK)
                if not out and not inflater.eof:
                    raise BadRequest("the gzip body is truncated")
                yield out
                pending = inflater.unconsumed_tail
            pending = inflater.unused_data
    except zlib.error as exc:
        raise BadRequest(f"the body is not valid gzip: {exc}") from None


def _unzstd(data: bytes | bytearray) -> Iterator[bytes]:
    zstandard = _zstandard()
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True)
        while out := reader.read(CHUNK):
            yield out
    except zstandard.ZstdError as exc:
        raise BadRequest(f"the body is not valid zstd: {exc}") from None


_ZSTD: list[Any] = []  # [module or None], filled on first use


def _zstandard() -> Any:
    if not _ZSTD:
        try:
            import zstandard
        except ImportError:
            zstandard = None
        _ZSTD.append(zstandard)
    return _ZSTD[0]


# --- replies -----------------------------------------------------------------------------------
def reply_encoding(accept_encoding: str) -> str | None:
    """The coding to compress a reply with, from the client's Accept-Encoding: zstd when both
    sides have it (faster), else gzip, else none."""
    accepted = set()
    for item in accept_encoding.lower().split(","):
        coding, _, params = item.partition(";")
        quality = params.strip().removeprefix("q=")
        if params and _quality(quality) <= 0:
            continue
        accepted.add(coding.strip())
    if "zstd" in accepted and _zstandard() is not None:
        return "zstd"
    if accepted & {"gzip", "x-gzip", "*"}:
        return "gzip"
    return None


def _quality(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def compress(body: bytes, coding: str) -> bytes:
    """`body` compressed with `coding` (one of reply_encoding's answers)."""
    if coding == "zstd":
        return _zstandard().ZstdCompressor(level=ZSTD_LEVEL).compress(body)
    deflater = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    return deflater.compress(body) + deflater.flush()
