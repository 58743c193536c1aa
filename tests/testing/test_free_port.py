"""Servers constructed together get distinct ports even before any of them binds (a second server that got
the first one's port died with "address already in use" in scripts that start two at once)."""

import socket

from sglang_cascade.testing import server_fixture
from sglang_cascade.testing.server_fixture import ServerProcess, free_port


def test_ports_handed_out_are_never_repeated_within_a_process(monkeypatch):
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    a, b = ServerProcess(["--threads", "1"]), ServerProcess(["--threads", "1"])  # not started: nothing bound
    assert a.port != b.port


def test_a_port_the_os_offers_twice_is_skipped(monkeypatch):
    """The OS may offer the same ephemeral port again once the probe socket closes; the second offer is
    refused and the next one taken."""
    offers = iter([41001, 41001, 41002])

    class FakeSocket:
        def __init__(self, *a):
            self.port = next(offers)

        def bind(self, addr):
            pass

        def getsockname(self):
            return ("127.0.0.1", self.port)

        def close(self):
            pass

    monkeypatch.setattr(server_fixture, "_HANDED_OUT", set())
    monkeypatch.setattr(socket, "socket", FakeSocket)
    assert free_port() == 41001
    assert free_port() == 41002
