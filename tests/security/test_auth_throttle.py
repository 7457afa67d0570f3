"""Authentication failures are throttled per peer, never per claimed instance id (DESIGN.md
section 11): after a burst of failures a peer's further failures are refused silently, the
right secret is still accepted at once (sans-IO, with explicit time), a refusal never says
why, and a live burst of wrong secrets is counted."""

from __future__ import annotations

import time
from typing import Any

from helpers import wait_until
from reliability.support import ECHO, WAIT, Systems, crash_reports, launch

from spear_actors.protocol import AuthRequest, AuthResponse, codec, pack
from spear_actors.protocol.auth import AuthPolicy, AuthVerdict
from spear_actors.protocol.client import AuthRejected
from spear_actors.protocol.server import (
    AuthenticationFailed,
    Send,
    ServerProtocol,
    ServerSettings,
)

from .support import try_auth

SECRET = "s" * 43
OTHER = "o" * 43
BURST = 5


def test_policy_throttles_a_peer_but_never_the_right_secret() -> None:
    policy = AuthPolicy(burst=BURST, refill_per_s=1.0)
    policy.expect("a", SECRET)
    policy.expect("b", OTHER)
    for i in range(BURST):
        assert policy.check("a", "wrong-secret", 0, now=10.0 + i * 0.01,
                            peer="10.0.0.9") is AuthVerdict.BAD_SECRET
    # that peer's next failures are throttled, whatever id it claims
    assert policy.check("a", "wrong-secret", 0, now=10.1, peer="10.0.0.9") is \
        AuthVerdict.THROTTLED
    assert policy.check("b", "wrong-secret", 0, now=10.1, peer="10.0.0.9") is \
        AuthVerdict.THROTTLED
    # the right secret is accepted at once, from that very peer too
    assert policy.check("a", SECRET, 0, now=10.1, peer="10.0.0.9") is AuthVerdict.OK
    # another peer's failures are its own
    assert policy.check("a", "wrong-secret", 0, now=10.1, peer="10.0.0.7") is \
        AuthVerdict.BAD_SECRET
    # one failure's worth comes back per second
    assert policy.check("a", "wrong-secret", 0, now=11.2, peer="10.0.0.9") is \
        AuthVerdict.BAD_SECRET
    assert policy.check("a", "wrong-secret", 0, now=11.3, peer="10.0.0.9") is \
        AuthVerdict.THROTTLED


def test_the_peer_table_is_bounded() -> None:
    policy = AuthPolicy(burst=BURST, max_tracked=100)
    for _ in range(BURST):
        assert policy.check("ghost", SECRET, 0, now=1.0, peer="p0") is \
            AuthVerdict.UNKNOWN_INSTANCE
    assert policy.check("ghost", SECRET, 0, now=1.0, peer="p0") is AuthVerdict.THROTTLED
    for i in range(1_000):  # random peers cannot grow it without bound
        policy.check("ghost", SECRET, 0, now=1.0, peer=f"p-{i}")
    assert not policy.throttled("p0", now=1.0), "the oldest entry should have been evicted"


def auth_outputs(server: ServerProtocol, rid: bytes, instance_id: str, token: str,
                 now: float) -> tuple[AuthResponse | None, list[Any]]:
    outputs = server.receive(rid, pack(AuthRequest(instance_id, token, "1", "process", {}),
                                       1, now), now, remote_addr="127.0.0.1")
    sent = [o for o in outputs if isinstance(o, Send)]
    if not sent:
        return None, outputs
    response = codec.decode_payload(codec.decode(sent[0].body))
    assert isinstance(response, AuthResponse)
    return response, outputs


def test_server_refusals_are_generic_and_throttled() -> None:
    policy = AuthPolicy()
    policy.expect("a", SECRET)
    server = ServerProtocol(ServerSettings(), policy)
    messages, reasons = set(), []
    attempts = [("a", "wrong-secret"), ("nobody", SECRET), ("a", "short")] + \
        [("a", "wrong-secret")] * 4  # the last two: past the burst, refused silently
    silent = 0
    for n, (instance_id, token) in enumerate(attempts):
        response, outputs = auth_outputs(server, f"peer-{n}".encode(), instance_id, token,
                                         now=100.0 + n * 0.01)
        if response is None:
            silent += 1
            assert not [o for o in outputs if isinstance(o, AuthenticationFailed)]
            continue
        assert not response.success and response.session_id is None
        messages.add(response.error_message)
        reasons += [o.reason for o in outputs if isinstance(o, AuthenticationFailed)]
    assert messages == {"authentication failed"}, "a refusal tells which check failed"
    assert reasons == ["bad_secret", "unknown_instance"] + ["bad_secret"] * 3
    assert silent == 2
    response, _ = auth_outputs(server, b"at-once", "a", SECRET, now=100.2)
    assert response is not None and response.success  # the right secret is never throttled


def test_a_live_burst_of_wrong_secrets_is_counted_and_throttled_silently(
        systems: Systems, captured_logs: list[Any]) -> None:
    system = systems.start()
    [echo] = launch(system, "echo", ECHO)
    before = system.instance(echo)
    failures = system.metrics()["auth_failures"]
    attempts = 8
    answered = 0
    started = time.monotonic()
    for _ in range(attempts):
        events = try_auth(system.endpoint, echo, "not-the-secret-" + "x" * 30, timeout=0.2)
        if events is not None:
            assert isinstance(events[-1], AuthRejected), events
            answered += 1
    refilled = int(time.monotonic() - started)  # one more answer per second of refill
    assert BURST <= answered <= BURST + refilled < attempts  # then 127.0.0.1 hears nothing
    wait_until(lambda: system.metrics()["auth_failures"] == failures + answered, WAIT,
               message=f"{answered} failures to be counted")
    wait_until(lambda: system.metrics()["errors"].get("auth_throttled") == attempts - answered,
               WAIT, message="the silent refusals to be counted")
    refused = [e.data["reason"] for e in system.events(limit=None,
                                                        kinds={"AuthenticationFailed"})]
    assert refused == ["bad_secret"] * answered, refused
    # the instance that holds the real secret was not disturbed
    after = system.instance(echo)
    assert after.connection_id == before.connection_id and after.restarts == 0
    assert system.execute(echo, b"fine", timeout=WAIT) == b"fine"
    assert not crash_reports(captured_logs)
