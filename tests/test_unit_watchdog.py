"""The database watchdog on real sockets: a call blocked on a peer that never answers is cut
off at its deadline, and a call that finishes in time is left alone."""

from __future__ import annotations

import socket

import pytest

from broker.errors import Unavailable
from broker.store.watchdog import WATCHDOG


def test_a_blocked_call_is_cut_off_and_answers_unavailable() -> None:
    ours, silent_peer = socket.socketpair()
    with ours, silent_peer:
        with pytest.raises(Unavailable, match="did not answer within 0.2 s") as info, \
                WATCHDOG.bounded(ours, 0.2):
            if ours.recv(1) == b"":  # woken by the shutdown, as libpq would be
                raise ConnectionError("server closed the connection unexpectedly")
        assert isinstance(info.value.__cause__, ConnectionError)
        assert ours.fileno() != -1, "the socket stays open: its owner closes it"


def test_a_call_in_time_is_left_alone_and_its_errors_pass_unchanged() -> None:
    ours, peer = socket.socketpair()
    with ours, peer:
        peer.sendall(b"x")
        with WATCHDOG.bounded(ours, 5):
            assert ours.recv(1) == b"x"
        with pytest.raises(KeyError), WATCHDOG.bounded(ours, 5):
            raise KeyError("not the database's fault")
        peer.sendall(b"y")  # the connection still works: nothing was shut down
        assert ours.recv(1) == b"y"
