"""Remote control over CURVE: the server's keys and the authorised client keys read from the
files ``[control]`` names (:class:`RemoteAccess`). The CURVE socket and the ZAP policy that
admits those keys are :mod:`spear_actors.transport.control`'s.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..tomlconfig import ControlSettings


__all__ = ["RemoteAccess", "is_z85"]

@dataclass(frozen=True)
class RemoteAccess:
    """The CURVE side of the control endpoint: where it binds, the server's key pair and the
    client public keys allowed in (Z85). Requests over it need no token: the key is the
    credential, checked by pyzmq's ZAP authenticator before any byte reaches us. It is the
    :class:`~spear_actors.transport.control.CurveKeys` the control sockets bind with."""

    endpoint: str
    public_key: bytes
    secret_key: bytes = dataclasses.field(repr=False)
    authorized: frozenset[bytes]

    @classmethod
    def load(cls, settings: ControlSettings) -> RemoteAccess:
        """Read the key files named in ``[control]``; ConfigError naming the key if bad."""
        import zmq.auth

        assert settings.server_secret_key_file and settings.authorized_keys_file
        try:
            public, secret = zmq.auth.load_certificate(settings.server_secret_key_file)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"control.server_secret_key_file: {exc}") from None
        if not secret:
            raise ConfigError(f"control.server_secret_key_file: "
                              f"{settings.server_secret_key_file} holds no secret key (give "
                              "the .key_secret file zmq.auth.create_certificates writes)")
        keys: set[bytes] = set()
        try:
            text = Path(settings.authorized_keys_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"control.authorized_keys_file: {exc}") from None
        for number, line in enumerate(text.splitlines(), 1):
            key = line.strip()
            if not key or key.startswith("#"):
                continue
            if len(key) != 40 or not is_z85(key):
                raise ConfigError(f"control.authorized_keys_file: line {number}: expected a "
                                  "40-character Z85 public key")
            keys.add(key.encode())
        return cls(settings.endpoint, public, secret, frozenset(keys))


def is_z85(key: str) -> bool:
    from zmq.utils import z85

    try:
        z85.decode(key)
    except (ValueError, KeyError, TypeError):
        return False
    return True
