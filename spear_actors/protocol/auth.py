"""Pure authentication policy: who may connect, with which secret, how often they may fail.

Sans-IO and single-threaded: the owner (the ConnectionActor's thread, or a test) calls every
method; time is passed in. Secrets are held here and nowhere else on the server side; they are
never part of a repr, an error or a returned value.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["AuthPolicy", "AuthVerdict", "default_token_check"]

MIN_TOKEN_LENGTH = 8


def default_token_check(token: str) -> bool:
    """The seed's validator: a token must be non-empty and at least 8 characters."""
    return len(token) >= MIN_TOKEN_LENGTH


class AuthVerdict(enum.Enum):
    """Why an auth attempt was accepted or refused (internal only: the peer is told none)."""

    OK = "ok"
    UNKNOWN_INSTANCE = "unknown_instance"
    BAD_SECRET = "bad_secret"
    INVALID_TOKEN = "invalid_token"
    REJECTED_BY_VALIDATOR = "rejected_by_validator"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    THROTTLED = "throttled"
    WRONG_LISTENER = "wrong_listener"


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class AuthPolicy:
    """Expected instances and their secrets, the validator, the connection limit, throttling.

    Throttling (DESIGN.md section 11) is a token bucket per *peer* (its address, never the
    instance id it claims): each failure spends a token, ``burst`` tokens at most, refilled
    at ``refill_per_s``. A peer with none left gets :attr:`AuthVerdict.THROTTLED` for its
    failures, which the server refuses silently (no answer, no event, no log line). Every
    attempt is still checked, so the right secret is accepted whatever its peer's bucket
    holds: an attacker's failures never delay a legitimate instance. The bucket table is
    bounded (oldest entries evicted) so random peers cannot grow memory.
    """

    def __init__(self, validator: Callable[[str, str], bool] | None = None,
                 max_connections: int = 1024, burst: int = 5, refill_per_s: float = 1.0,
                 max_tracked: int = 10_000) -> None:
        self._secrets: dict[str, bytes] = {}
        self._validator = validator
        self.max_connections = max_connections
        self._burst = float(burst)
        self._refill = refill_per_s
        self._max_tracked = max_tracked
        self._buckets: dict[str, _Bucket] = {}

    def __repr__(self) -> str:
        return f"<AuthPolicy expecting {len(self._secrets)} instance(s)>"

    # -- registration ------------------------------------------------------------------------
    def expect(self, instance_id: str, secret: str) -> None:
        """Accept ``instance_id`` with ``secret`` from now on (replaces any previous secret)."""
        self._secrets[instance_id] = secret.encode()

    def forget(self, instance_id: str) -> None:
        """Stop accepting ``instance_id`` at all."""
        self._secrets.pop(instance_id, None)

    def is_expected(self, instance_id: str) -> bool:
        return instance_id in self._secrets

    # -- decisions ---------------------------------------------------------------------------
    def throttled(self, peer: str, now: float) -> bool:
        bucket = self._buckets.get(peer)
        if bucket is None:
            return False
        self._refill_bucket(bucket, now)
        return bucket.tokens < 1.0

    def check(self, instance_id: str, token: str, active_connections: int,
              now: float, replacing: bool = False, peer: str = "") -> AuthVerdict:
        """Decide one attempt from ``peer``. ``replacing``: the instance already holds a
        connection, so the limit is not reached by accepting it. A failure is recorded
        against ``peer``; one from a peer out of tokens is THROTTLED instead."""
        verdict = self._judge(instance_id, token, active_connections, replacing)
        if verdict in (AuthVerdict.OK, AuthVerdict.TOO_MANY_CONNECTIONS):
            return verdict
        if self.throttled(peer, now):
            return AuthVerdict.THROTTLED
        self._record_failure(peer, now)
        return verdict

    def _judge(self, instance_id: str, token: str, active: int,
               replacing: bool) -> AuthVerdict:
        expected = self._secrets.get(instance_id)
        # compare even for unknown ids so timing does not tell which ids exist
        secret_ok = hmac.compare_digest(token.encode(), expected if expected is not None
                                        else b"\0" * 64)
        if expected is None:
            return AuthVerdict.UNKNOWN_INSTANCE
        if not secret_ok:
            return AuthVerdict.BAD_SECRET
        if not default_token_check(token):
            return AuthVerdict.INVALID_TOKEN
        if self._validator is not None:
            try:
                accepted = bool(self._validator(instance_id, token))
            except Exception:
                accepted = False
            if not accepted:
                return AuthVerdict.REJECTED_BY_VALIDATOR
        if not replacing and active >= self.max_connections:
            return AuthVerdict.TOO_MANY_CONNECTIONS
        return AuthVerdict.OK

    def _refill_bucket(self, bucket: _Bucket, now: float) -> None:
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(self._burst, bucket.tokens + elapsed * self._refill)
        bucket.updated = now

    def _record_failure(self, peer: str, now: float) -> None:
        bucket = self._buckets.get(peer)
        if bucket is None:
            if len(self._buckets) >= self._max_tracked:
                self._buckets.pop(next(iter(self._buckets)))
            bucket = self._buckets[peer] = _Bucket(self._burst, now)
        self._refill_bucket(bucket, now)
        bucket.tokens = max(0.0, bucket.tokens - 1.0)
