"""Ports for the servers the tests start, unit and integration alike (one count per process)."""

import itertools
import os
import socket

# Ports for servers the tests start, counted up from below the kernel's ephemeral range
# (/proc/sys/net/ipv4/ip_local_port_range, 32768-60999 by default): the kernel never hands
# these to another socket, so a port found free here stays free until the server binds it.
_PORTS = itertools.count(20000 + (os.getpid() % 12) * 1000)


def free_port() -> int:
    """A port no other socket holds, from this session's range below the ephemeral ports.

    A port found by binding port 0 and closing is in the ephemeral range: until the server binds
    it, the OS may give it to any outgoing connection (Ray opens hundreds). The kernel never
    picks a port below ``ip_local_port_range`` (32768 here) by itself, and each is handed out once
    per session, so a port from here stays free until the server that was told it takes it."""
    for port in _PORTS:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("unreachable")
