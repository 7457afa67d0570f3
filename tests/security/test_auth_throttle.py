"""Authentication failures are throttled per instance id: after a burst of failures even the
right secret is refused for a while (sans-IO, with explicit time), the refusal never says
why, and a live burst of wrong secrets is counted."""

from __future__ import annotations

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


def test_policy_throttles_an_id_after_a_burst_of_failures() -> None:
    policy = AuthPolicy(burst=BURST, refill_per_s=1.0)
    policy.expect("a", SECRET)
    policy.expect("b", OTHER)
    for i in range(BURST):
        assert policy.check("a", "wrong-secret", 0, now=10.0 + i * 0.01) is \
            AuthVerdict.BAD_SECRET
    # the right secret, quickly after: refused without being looked at
    assert policy.check("a", SECRET, 0, now=10.1) is AuthVerdict.THROTTLED
    assert policy.check("a", SECRET, 0, now=10.5) is AuthVerdict.THROTTLED
    # other ids are not affected
    assert policy.check("b", OTHER, 0, now=10.1) is AuthVerdict.OK
    # one attempt's worth comes back per second
    assert policy.check("a", SECRET, 0, now=11.2) is AuthVerdict.OK
    # a success does not refill the bucket: a failure right after throttles again
    assert policy.check("a", "wrong-secret", 0, now=11.3) is AuthVerdict.BAD_SECRET
    assert policy.check("a", SECRET, 0, now=11.4) is AuthVerdict.THROTTLED
    # a new secret (a restart) starts afresh
    policy.expect("a", OTHER)
    assert policy.check("a", OTHER, 0, now=11.5) is AuthVerdict.OK


def test_unknown_ids_are_throttled_too_and_the_table_is_bounded() -> None:
    policy = AuthPolicy(burst=BURST, max_tracked=100)
    for _ in range(BURST):
        assert policy.check("ghost", SECRET, 0, now=1.0) is AuthVerdict.UNKNOWN_INSTANCE
    assert policy.check("ghost", SECRET, 0, now=1.0) is AuthVerdict.THROTTLED
    for i in range(1_000):  # random ids cannot grow it without bound
        policy.check(f"random-{i}", SECRET, 0, now=1.0)
    assert not policy.throttled("ghost", now=1.0), "the oldest entry should have been evicted"


def auth_outputs(server: ServerProtocol, rid: bytes, instance_id: str, token: str,
                 now: float) -> tuple[AuthResponse, list[Any]]:
    outputs = server.receive(rid, pack(AuthRequest(instance_id, token, "1", "process", {}),
                                       1, now), now)
    [send] = [o for o in outputs if isinstance(o, Send)]
    response = codec.decode_payload(codec.decode(send.body))
    assert isinstance(response, AuthResponse)
    return response, outputs


def test_server_refusals_are_generic_and_throttled() -> None:
    policy = AuthPolicy()
    policy.expect("a", SECRET)
    server = ServerProtocol(ServerSettings(), policy)
    messages, reasons = set(), []
    attempts = [("a", "wrong-secret"), ("nobody", SECRET), ("a", "short")] + \
        [("a", "wrong-secret")] * 3 + [("a", SECRET)]  # the last: the right one, throttled
    for n, (instance_id, token) in enumerate(attempts):
        response, outputs = auth_outputs(server, f"peer-{n}".encode(), instance_id, token,
                                         now=100.0 + n * 0.01)
        assert not response.success and response.session_id is None
        messages.add(response.error_message)
        reasons += [o.reason for o in outputs if isinstance(o, AuthenticationFailed)]
    assert messages == {"authentication failed"}, "a refusal tells which check failed"
    assert reasons == ["bad_secret", "unknown_instance"] + ["bad_secret"] * 4 + ["throttled"]
    response, _ = auth_outputs(server, b"later", "a", SECRET, now=101.5)
    assert response.success


def test_a_live_burst_of_wrong_secrets_is_counted_and_throttled(
        systems: Systems, captured_logs: list[Any]) -> None:
    system = systems.start()
    [echo] = launch(system, "echo", ECHO)
    before = system.instance(echo)
    failures = system.metrics()["auth_failures"]
    attempts = 8
    for _ in range(attempts):
        events = try_auth(system.endpoint, echo, "not-the-secret-" + "x" * 30)
        assert events is not None and isinstance(events[-1], AuthRejected), events
    wait_until(lambda: system.metrics()["auth_failures"] == failures + attempts, WAIT,
               message=f"{attempts} failures to be counted")
    refused = [e.data["reason"] for e in system.events(limit=None,
                                                        kinds={"AuthenticationFailed"})]
    assert refused == ["bad_secret"] * BURST + ["throttled"] * (attempts - BURST), refused
    # the instance that holds the real secret was not disturbed
    after = system.instance(echo)
    assert after.connection_id == before.connection_id and after.restarts == 0
    assert system.execute(echo, b"fine", timeout=WAIT) == b"fine"
    assert not crash_reports(captured_logs)
