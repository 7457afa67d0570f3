"""Wire fuzzing against a live system: hostile frames from unauthenticated raw DEALERs and,
at the same time, from an instance on its own authenticated connection (programs/fuzzer.py).
The system answers or drops each one, counts every refusal, crashes nowhere, and keeps
serving a legitimate echo instance throughout."""

from __future__ import annotations

import json
from typing import Any

import zmq
from helpers import wait_until
from reliability.support import (
    ECHO,
    WAIT,
    EchoProbe,
    Systems,
    crash_reports,
    launch,
)

from spear_actors import ConnectionConfig, RestartPolicy, SpearSystem

from .flood import refusals
from .programs.fuzzgen import frames
from .support import FUZZER

SEED = 1129
AUTH_FRAMES = 1_000
AUTH_RATE = 400.0
"""Frames per second from the authenticated fuzzer: under the per-peer budget (64 frames per
100 ms tick, DESIGN.md section 11), so every bad one is answered."""
RAW_PEERS = 20
RAW_FRAMES = 75  # per peer: 1 500 in all
CONNECTION = ConnectionConfig(heartbeat_interval=0.5, heartbeat_timeout=1.5, auth_timeout=2.0)
"""Slower heartbeats than elsewhere: thousands of frames arrive at once on a loaded machine,
and a client (or the server) giving up on a late heartbeat is not what is tested here."""


def report(system: SpearSystem, fuzzer: str) -> dict[str, Any]:
    answer = system.execute(fuzzer, b"", method="report", timeout=WAIT)
    return dict(json.loads(answer))


def test_fuzzed_frames_are_answered_or_dropped_and_counted(
        systems: Systems, captured_logs: list[Any]) -> None:
    system = systems.start(CONNECTION)
    [echo] = launch(system, "echo", ECHO)
    errors_before = refusals(system)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    peers = []
    try:
        with EchoProbe(system, echo) as probe:
            # temporary: a second run (after a restart) would spoil the counts
            [fuzzer] = launch(system, "fuzzer", FUZZER, restart=RestartPolicy(mode="temporary"),
                              env={"FUZZ_SEED": str(SEED), "FUZZ_FRAMES": str(AUTH_FRAMES),
                                   "FUZZ_RATE": str(AUTH_RATE)})
            connection = system.instance(fuzzer).connection_id
            # unauthenticated peers fuzz at the same time
            unauth_sent = 0
            for n in range(RAW_PEERS):
                sock = ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(system.endpoint)
                peers.append(sock)
                for frame in frames(SEED + 1 + n, RAW_FRAMES):
                    sock.send(frame)
                    unauth_sent += 1
                    while sock.poll(0):
                        sock.recv()  # answers (ERROR not_authenticated, AUTH_RESPONSE)
            done = wait_until(lambda: (r := report(system, fuzzer))["done"] and r, WAIT + 20,
                              interval=0.2, message="the authenticated fuzzer to finish")
        # the fuzzer's bad frames (undecodable, or types an instance may not send) are each
        # counted; an unauthenticated peer is muted at its first refused frame and cut off
        # (DESIGN.md section 11), so of its frames only those that arrived before the cut
        # are seen (each counted once), the rest die with its connection
        least = RAW_PEERS + done["bad"]
        def refused() -> int:
            return refusals(system) - errors_before

        wait_until(lambda: refused() >= least, WAIT,
                   message=f"at least {least} refusals to be counted")
        counted = refused()
        # a cut peer's DEALER reconnects and sends what it still held: one frame per cut may
        # be seen twice (the one libzmq was writing when the connection went)
        cuts = system.metrics()["errors"].get("peers_cut", 0)
        assert least <= counted <= unauth_sent + done["bad"] + cuts, (
            counted, least, unauth_sent, sorted(system.metrics()["errors"].items()))
        # ... and each bad frame on the authenticated connection got its ERROR back
        final = report(system, fuzzer)
        assert sum(final["errors"].values()) == final["bad"], (
            final, sorted(system.metrics()["errors"].items()))
        assert final["sent"] >= AUTH_FRAMES * 0.9 and final["bad"] >= AUTH_FRAMES // 2, final
        assert final["closed"] is None, final
    finally:
        for sock in peers:
            sock.close(0)
        ctx.term()

    # the fuzzer's session survived all of it; nothing crashed; the echo was served throughout
    info = system.instance(fuzzer)
    assert info.state.is_serving and info.connection_id == connection and info.restarts == 0
    probe.result.assert_healthy()
    tree = system.tree()
    assert tree.services and all(tree.services.values()), tree
    assert system.execute(echo, b"after", timeout=WAIT) == b"after"
    assert not crash_reports(captured_logs), crash_reports(captured_logs)[:3]
    errors = system.metrics()["errors"]
    assert errors.get("bad_message", 0) > 0 and errors.get("not_authenticated", 0) > 0, errors
    assert errors.get("peers_cut", 0) > 0, errors  # hostile raw peers were cut off
