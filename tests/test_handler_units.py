"""The record format and the spool on their own (no broker needed), and handler options."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support import clean_env, free_port, wait_until

from lq_logging import JSONFormatter, LogQueueHandler
from lq_logging.spool import Spool, adopt_orphans


def test_json_formatter_works_with_any_stdlib_handler() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter(fields={"service": "shop", "message": "ignored"}))
    log = logging.getLogger("test.units.formatter")
    log.propagate = False
    log.addHandler(handler)
    try:
        try:
            raise KeyError("k")
        except KeyError:
            log.error("bad %s", "thing", exc_info=True, extra={"obj": object, "n": 1})
    finally:
        log.removeHandler(handler)
    data = json.loads(stream.getvalue())
    assert data["message"] == "bad thing" and data["level"] == "ERROR"
    assert data["levelno"] == 40 and data["logger"] == "test.units.formatter"
    assert data["function"] == "test_json_formatter_works_with_any_stdlib_handler"
    assert data["service"] == "shop"
    assert data["extra"] == {"obj": "<class 'object'>", "n": 1}
    assert "KeyError: 'k'" in data["exception"] and "stack" not in data


@pytest.mark.parametrize("fields", [{}, {"service": "shop", "tags": ["a", 1]}])
def test_plain_records_take_a_shortcut_to_the_same_text(fields: dict) -> None:
    formatter = JSONFormatter(fields=fields, host="web-1")
    log = logging.getLogger("test.units.shortcut")
    plain = log.makeRecord(log.name, logging.INFO, __file__, 7, 'say "%s" é\n\t', ("hi",),
                           None)
    odd = log.makeRecord(log.name, logging.WARNING, __file__, 7, {"not": "a str"}, None, None)
    odd.process = odd.processName = odd.thread = odd.threadName = odd.funcName = None
    with_extra = log.makeRecord(log.name, logging.INFO, __file__, 7, "x", None, None,
                                extra={"k": 1})
    for record in (plain, odd, with_extra):
        text = formatter.format(record)
        assert text == json.dumps(formatter.to_dict(record), ensure_ascii=False,
                                  separators=(",", ":"))
        assert json.loads(text)["host"] == "web-1"
    assert json.loads(formatter.format(plain))["message"] == 'say "hi" é\n\t'


def test_oversized_record_is_truncated_with_a_marker() -> None:
    formatter = JSONFormatter(max_bytes=10_000)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "é" * 50_000, None, None)
    text = formatter.format(record)
    data = json.loads(text)
    assert len(text.encode()) <= 10_000
    assert data["truncated"] is True and "[truncated by lq_logging" in data["message"]


@pytest.mark.parametrize("prefix", ["", "\udc80"], ids=["plain", "lone-surrogate"])
def test_oversized_multibyte_record_is_cut_by_bytes_not_wiped(prefix: str) -> None:
    formatter = JSONFormatter(max_bytes=20_000)
    record = logging.LogRecord("app", logging.INFO, __file__, 1, prefix + "é" * 30_000,
                               None, None)
    text = formatter.format(record)
    text.encode("utf-8")  # writable by any UTF-8 handler
    assert 15_000 < len(text.encode()) <= 20_000
    data = json.loads(text)
    assert data["truncated"] is True
    kept = data["message"].split("...[truncated", 1)[0]
    assert kept == prefix + "é" * (len(kept) - len(prefix)) and len(kept) > 5_000
    dropped = int(data["message"].rsplit(": ", 1)[1].split()[0])
    assert len(kept) + dropped == 30_000 + len(prefix)


def test_spool_survives_a_torn_write_and_is_adopted_once(tmp_path: Path) -> None:
    spool = Spool.create(str(tmp_path))
    first = spool.append("t", ["a", "b"])
    second = spool.append("t", ["c"])
    spool.assign(first, 7, 100)
    spool.done(first)
    third = spool.append("t", ["d"], 8, 200)
    assert [b.id for b in spool] == [second.id, third.id]
    assert adopt_orphans(str(tmp_path)) == []  # held by this "process"
    os.write(spool.fd, b'{"op": "b", "id": 99, "t": "t", "m": ["torn')  # kill -9 mid-write
    spool.abandon()  # the descriptor goes away without unlinking: like a dead process
    [adopted] = adopt_orphans(str(tmp_path))
    assert [(b.id, b.producer_id, b.seq) for b in adopted] == [(second.id, None, None),
                                                              (third.id, 8, 200)]
    assert adopted.read(adopted.head()) == ["c"]
    assert adopt_orphans(str(tmp_path)) == []  # now held by the adopter
    adopted.done(adopted.head())
    adopted.done(adopted.head())
    adopted.close()
    assert list(tmp_path.glob("*.spool")) == []


def test_spool_is_bounded_oldest_first(tmp_path: Path) -> None:
    spool = Spool.create(str(tmp_path))
    for i in range(10):
        spool.append("t", [f"m{i}" * 100])
    lost = spool.trim(1000)
    assert lost > 0 and spool.live_records == 10 - lost
    assert spool.read(spool.head()) == [f"m{lost}" * 100]
    spool.close()


BAD_OPTIONS = [
    ({"topic": "app logs"}, "topic: not a topic name: 'app logs' (1-200 characters: letters"),
    ({"topic": "app\n"}, "topic: not a topic name: 'app\\n'"),
    ({"overflow": "explode"}, "overflow: 'explode' is not one of spool, drop, block"),
    ({"batch_size": 0}, "batch_size: 0 is not a number from 1 to 10000"),
    ({"batch_size": "many"}, "batch_size: 'many' is not a number from 1 to 10000"),
    ({"queue_size": 0}, "queue_size: 0 is not a number from 1 up"),
    ({"flush_interval": -1}, "flush_interval: -1 is not a number from 0.001 to 3600"),
    ({"url": "http//127.0.0.1:5000"}, "url: not a broker url: 'http//127.0.0.1:5000' (try "
                                      "http://127.0.0.1:5000)"),
    ({"url": "ftp://127.0.0.1"}, "url: not a broker url: 'ftp://127.0.0.1'"),
    ({"url": []}, "url: at least one broker url is required"),
    ({"spool_fsync": "maybe"}, "spool_fsync: not a boolean: 'maybe' (try true or false)"),
    ({"level": "LOUD"}, "level: 'LOUD' is not a level (DEBUG, INFO"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_OPTIONS, ids=[m.split(":")[0] + str(i)
                                                                   for i, (_, m)
                                                                   in enumerate(BAD_OPTIONS)])
def test_bad_options_fail_at_configuration_naming_what_is_allowed(kwargs: dict,
                                                                  message: str) -> None:
    with pytest.raises(ValueError) as caught:
        LogQueueHandler(**kwargs)
    assert str(caught.value).startswith(message), str(caught.value)


def test_a_bad_option_in_dictconfig_leaves_no_traceback_at_exit(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import logging.config
        try:
            logging.config.dictConfig({"version": 1, "handlers": {"lq": {
                "class": "lq_logging.LogQueueHandler", "topic": "app logs"}},
                "root": {"handlers": ["lq"]}})
        except ValueError as exc:
            print("REFUSED", exc.__cause__ or exc)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=30, env=clean_env(LQ_SPOOL_DIR=str(tmp_path)))
    assert proc.returncode == 0
    assert proc.stdout.startswith("REFUSED topic: not a topic name: 'app logs'"), proc.stdout
    assert proc.stderr == "", proc.stderr


def test_host_port_without_a_scheme_is_still_a_url(tmp_path: Path) -> None:
    handler = LogQueueHandler(url="127.0.0.1:1, http://127.0.0.1:2", spool_dir=str(tmp_path))
    handler.close()
    assert handler.urls == ["127.0.0.1:1", "http://127.0.0.1:2"]


# --- a refused batch replaced by its parts -------------------------------------------------

def _live(spool: Spool) -> list[tuple[list[str], int | None, int | None]]:
    return [(spool.read(b), b.producer_id, b.seq) for b in spool]


def _crash_and_adopt(spool: Spool, directory: Path) -> Spool:
    spool.abandon()  # like kill -9: the lock goes, the file stays
    [adopted] = adopt_orphans(str(directory))
    return adopted


@pytest.mark.parametrize("crash", ["before the x line", "in the x line", "after it"])
def test_spool_replace_is_all_or_nothing_across_a_crash(tmp_path: Path, crash: str) -> None:
    spool = Spool.create(str(tmp_path))
    spool.append("t", ["a"], 7, 99)
    refused = spool.append("t", ["b1", "b2", "b3"])
    spool.append("t", ["c"])
    spool.assign(refused, 7, 100)
    size = os.fstat(spool.fd).st_size
    parts = spool.replace(refused, [["b1"], ["b2", "b3"]])
    assert [b.count for b in parts] == [1, 2] and spool.live_records == 5
    assert _live(spool) == [(["a"], 7, 99), (["b1"], None, None), (["b2", "b3"], None, None),
                            (["c"], None, None)]
    data = (tmp_path / os.path.basename(spool.path)).read_bytes()
    x_line = data.rstrip(b"\n").rfind(b"\n") + 1
    assert json.loads(data[x_line:])["op"] == "x"
    # Each part with room for its "a" line (an "r" line), in the same write.
    assert [json.loads(line)["op"] for line in data[size:x_line].splitlines()] == [
        "p", "r", "p", "r"]
    cut = {"before the x line": x_line, "in the x line": x_line + 10, "after it": len(data)}
    os.truncate(spool.path, cut[crash])
    adopted = _crash_and_adopt(spool, tmp_path)
    if crash == "after it":
        assert _live(adopted) == [(["a"], 7, 99), (["b1"], None, None),
                                  (["b2", "b3"], None, None), (["c"], None, None)]
    else:  # the refused batch as it was, with its seq; the parts never happened
        assert _live(adopted) == [(["a"], 7, 99), (["b1", "b2", "b3"], 7, 100),
                                  (["c"], None, None)]
    assert adopted.live_records == sum(len(m) for m, _, _ in _live(adopted))
    new = adopted.append("t", ["d"])
    assert new.id > max(b.id for b in parts)  # ids of dead parts are never reused
    adopted.close()


def test_spool_split_part_sent_before_a_crash_keeps_its_seq(tmp_path: Path) -> None:
    spool = Spool.create(str(tmp_path))
    refused = spool.append("t", [f"m{i}" for i in range(6)])
    spool.assign(refused, 7, 100)
    first, second = spool.replace(refused, [["m0", "m1", "m2"], ["m3", "m4", "m5"]])
    spool.assign(first, 7, 101)  # about to be sent; the crash comes before "done"
    first_again, third = spool.replace(second, [["m3"], ["m4", "m5"]])
    assert first_again is not first
    adopted = _crash_and_adopt(spool, tmp_path)
    assert _live(adopted) == [(["m0", "m1", "m2"], 7, 101), (["m3"], None, None),
                              (["m4", "m5"], None, None)]
    adopted.done(adopted.head())
    adopted._rewrite()  # compaction keeps the order and the seqs
    adopted = _crash_and_adopt(adopted, tmp_path)
    assert _live(adopted) == [(["m3"], None, None), (["m4", "m5"], None, None)]
    assert adopted.live_records == 3
    adopted.close()


def test_spool_writes_a_seq_over_the_room_kept_for_it(tmp_path: Path) -> None:
    # A batch spooled without a seq gets its "a" line in place (no new space: a full disk
    # cannot stop it); a second one (the broker forgot the producer id) is appended, and wins.
    spool = Spool.create(str(tmp_path))
    given = spool.append("t", ["a"], 7, 99)
    bare = spool.append("t", ["b"])
    size = os.fstat(spool.fd).st_size
    spool.assign(given, 7, 100)  # no room kept for it: appended
    assert os.fstat(spool.fd).st_size > size
    size = os.fstat(spool.fd).st_size
    spool.assign(bare, 8, 200)
    assert os.fstat(spool.fd).st_size == size
    adopted = _crash_and_adopt(spool, tmp_path)
    assert _live(adopted) == [(["a"], 7, 100), (["b"], 8, 200)]
    head, bare = list(adopted)
    head.producer_id = head.seq = bare.producer_id = bare.seq = None  # as forget_ids does
    adopted.assign(bare, 9, 300)
    assert os.fstat(adopted.fd).st_size > size
    adopted.assign(head, 9, 301)
    adopted = _crash_and_adopt(adopted, tmp_path)
    assert _live(adopted) == [(["a"], 9, 301), (["b"], 9, 300)]
    adopted.close()


def test_spool_compaction_keeps_room_for_the_seqs_still_missing(tmp_path: Path) -> None:
    spool = Spool.create(str(tmp_path))
    done, given, bare = (spool.append("t", ["a"]), spool.append("t", ["b"], 7, 99),
                         spool.append("t", ["c"]))
    spool.done(done)
    spool._rewrite()
    size = os.fstat(spool.fd).st_size
    spool.assign(bare, 8, 200)
    assert os.fstat(spool.fd).st_size == size
    spool.assign(given, 7, 100)
    assert os.fstat(spool.fd).st_size > size
    adopted = _crash_and_adopt(spool, tmp_path)
    assert _live(adopted) == [(["b"], 7, 100), (["c"], 8, 200)]
    adopted.close()


# --- fsync -----------------------------------------------------------------------------------

@pytest.fixture
def syncs(monkeypatch) -> list[tuple[str, int, int]]:
    """Every fsync/fdatasync (still done): what it synced (kind, inode) and the size then."""
    calls: list[tuple[str, int, int]] = []
    for name in ("fsync", "fdatasync"):
        real = getattr(os, name, None)
        if real is None:
            continue

        def spy(fd: int, _real=real) -> None:
            st = os.fstat(fd)
            calls.append(("dir" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino,
                          st.st_size))
            _real(fd)

        monkeypatch.setattr(os, name, spy)
    return calls


def test_spool_fsyncs_each_batch_before_it_counts_and_the_directory(
        tmp_path: Path, syncs: list) -> None:
    directory = tmp_path / "spool"
    spool = Spool.create(str(directory))
    ino = os.fstat(spool.fd).st_ino
    assert [(k, i) for k, i, _ in syncs] == [("dir", directory.stat().st_ino),
                                            ("dir", tmp_path.stat().st_ino)]
    syncs.clear()
    a = spool.append("t", ["a"])
    assert syncs == [("file", ino, os.fstat(spool.fd).st_size)]
    b = spool.append("t", ["b"], sync=False)
    spool.append("t", ["c"], sync=False)
    assert len(syncs) == 1
    spool.sync()
    spool.sync()  # nothing new: no second fsync
    assert len(syncs) == 2 and syncs[-1][2] == os.fstat(spool.fd).st_size
    spool.assign(a, 7, 100)  # durable before the batch is sent
    assert len(syncs) == 3 and syncs[-1][2] == os.fstat(spool.fd).st_size
    spool.done(a)  # a lost "done" only replays a seq the broker already has
    assert len(syncs) == 3
    before = os.fstat(spool.fd).st_size
    spool.replace(b, [["b"]])
    parts_synced, x_synced = syncs[3:]
    assert before < parts_synced[2] < x_synced[2] == os.fstat(spool.fd).st_size
    syncs.clear()
    spool._rewrite()
    new_ino = os.fstat(spool.fd).st_ino
    assert [(k, i) for k, i, _ in syncs] == [("file", new_ino), ("dir", directory.stat().st_ino)]
    spool.close()


def test_spool_without_fsync_never_syncs(tmp_path: Path, syncs: list) -> None:
    spool = Spool.create(str(tmp_path / "spool"), fsync=False)
    batch = spool.append("t", ["a", "b"])
    spool.assign(batch, 7, 100)
    spool.replace(batch, [["a"], ["b"]])
    spool._rewrite()
    spool.sync()
    spool.close()
    assert syncs == []


def test_spool_fsync_is_a_handler_option_from_dictconfig(tmp_path: Path, syncs: list) -> None:
    logger = logging.getLogger("test.units.fsync")
    config = {"version": 1, "disable_existing_loggers": False,
              "handlers": {"lq": {"class": "lq_logging.LogQueueHandler",
                                  "url": f"http://127.0.0.1:{free_port()}", "topic": "t",
                                  "spool_dir": str(tmp_path), "spool_fsync": "false",
                                  "flush_interval": 0.05, "timeout": 1}},
              "loggers": {logger.name: {"handlers": ["lq"], "level": "INFO",
                                        "propagate": False}}}
    logging.config.dictConfig(config)
    [handler] = logger.handlers
    try:
        assert isinstance(handler, LogQueueHandler) and handler.spool_fsync is False
        for i in range(10):
            logger.info("r %d", i)
        wait_until(lambda: handler.stats()["spooled"] == 10, message="spooled")
        assert syncs == []
    finally:
        logger.removeHandler(handler)
        handler.close()
    default = LogQueueHandler(url="http://127.0.0.1:1", spool_dir=str(tmp_path))
    default.close()
    assert default.spool_fsync is True
