"""Who may talk to the server, and what never leaves it: TLS, mutual TLS, bearer tokens, guarded requests.

Server side, all driven by :class:`~hark.config.Settings`:

* ``tls_cert_file`` + ``tls_key_file``: the port speaks TLS only. ``tls_client_ca_file`` adds mutual TLS:
  a client must present a certificate signed by that CA or the handshake fails.
* ``auth_tokens_file`` and/or ``auth_tokens`` (``HARK_AUTH_TOKENS``, comma-separated): every call must carry
  ``authorization: Bearer <token>`` metadata naming one of them, or it ends with ``UNAUTHENTICATED`` before
  its request is even parsed. Health checks are exempt unless ``auth_exempt_health`` is off (load balancers
  and kubelets probe without secrets); reflection is exempt only with ``auth_exempt_reflection``.
* Tokens are compared in constant time (``hmac.compare_digest`` over SHA-256 digests, so neither the
  content nor the length of a token leaks through timing), against every configured token without an
  early exit. They are never logged, and neither is audio.
* :class:`MalformedRequestInterceptor` turns a unary request that is not valid protobuf into
  ``INVALID_ARGUMENT`` instead of gRPC's ``UNKNOWN`` and a logged traceback per request (a cheap way to
  flood the logs).

Client side: :func:`channel_credentials` and :func:`bearer_metadata`, used by :class:`hark.client.HarkClient`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import grpc

from hark.config import Settings
from hark.logging import get_logger

log = get_logger("hark.security")

HEALTH_PREFIX: Final = "/grpc.health.v1.Health/"
REFLECTION_PREFIXES: Final = ("/grpc.reflection.v1alpha.ServerReflection/", "/grpc.reflection.v1.ServerReflection/")
# Shorter tokens are guessable; HTTP/2 header values allow visible ASCII only.
MIN_TOKEN_CHARS: Final = 16
_TOKEN_PATTERN: Final = re.compile(r"^[\x21-\x7e]+$")
_BEARER: Final = "bearer "


class SecurityError(ValueError):
    """Security settings that cannot work (a key without its certificate, an unreadable token file...)."""


# ------------------------------------------------------------------------------------------------ files


def read_secret_file(path: Path | str, what: str) -> bytes:
    """The bytes of a PEM or token file, or :class:`SecurityError` naming the setting to fix."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise SecurityError(f"cannot read the {what} {path}: {e.strerror or e}") from e
    if not data.strip():
        raise SecurityError(f"the {what} {path} is empty")
    return data


# ------------------------------------------------------------------------------------------ server: TLS


def tls_files(settings: Settings) -> tuple[Path, Path, Path | None] | None:
    """The port's certificate, key and client CA (mutual TLS) when TLS is configured; None when it is off.

    Every transport reads the same three settings the same way, and refuses the same half-configurations.
    """
    cert, key, client_ca = settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
    if cert is None and key is None:
        if client_ca is not None:
            raise SecurityError("tls_client_ca_file needs tls_cert_file and tls_key_file: mutual TLS is TLS first")
        return None
    if cert is None or key is None:
        raise SecurityError("set both tls_cert_file and tls_key_file (HARK_TLS_CERT_FILE, HARK_TLS_KEY_FILE)")
    return cert, key, client_ca


def tls_mode(settings: Settings) -> str:
    """``off``, ``tls`` or ``mtls``: for the startup log line."""
    if settings.tls_cert_file is None:
        return "off"
    return "mtls" if settings.tls_client_ca_file is not None else "tls"


# --------------------------------------------------------------------------------------- server: tokens


def parse_tokens(text: str, source: str) -> list[str]:
    """Tokens from a file's text (one per line) or the env value (comma-separated); ``#`` starts a comment."""
    tokens = []
    for raw in re.split(r"[\n,]", text):
        token = raw.split("#", 1)[0].strip()
        if not token:
            continue
        if not _TOKEN_PATTERN.fullmatch(token):
            raise SecurityError(f"a token in {source} has spaces or characters that cannot travel in gRPC metadata")
        if len(token) < MIN_TOKEN_CHARS:
            raise SecurityError(f"a token in {source} is shorter than {MIN_TOKEN_CHARS} characters; use a random one")
        tokens.append(token)
    return tokens


def load_tokens(settings: Settings) -> list[str]:
    """Every accepted token; empty means token authentication is off.

    A configured token file that is missing, unreadable or holds no token is an error, not "auth off":
    whoever set it meant to require tokens, and failing open would expose the server.
    """
    tokens = []
    if settings.auth_tokens_file is not None:
        path = settings.auth_tokens_file
        text = read_secret_file(path, "token file (auth_tokens_file)").decode("utf-8", errors="replace")
        from_file = parse_tokens(text, str(path))
        if not from_file:
            raise SecurityError(f"the token file {path} holds no token (only blank lines and comments)")
        tokens += from_file
    tokens += parse_tokens(settings.auth_tokens.get_secret_value(), "HARK_AUTH_TOKENS")
    return list(dict.fromkeys(tokens))


def _digest(token: str | bytes) -> bytes:
    return hashlib.sha256(token.encode() if isinstance(token, str) else token).digest()


class TokenVerifier:
    """Checks presented tokens against the configured ones in time independent of their content."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = [_digest(t) for t in tokens]
        if not self._digests:
            raise ValueError("TokenVerifier needs at least one token")

    def __len__(self) -> int:
        return len(self._digests)

    def verify(self, presented: str | bytes) -> bool:
        candidate = _digest(presented)
        match = False
        for digest in self._digests:  # no early exit: every token is compared every time
            match |= hmac.compare_digest(candidate, digest)
        return match


def bearer_token(metadata: Sequence[tuple[str, Any]] | None) -> tuple[str | None, str]:
    """The bearer token in call metadata, or None and why it is missing (for the error message)."""
    values = [v for k, v in metadata or () if k == "authorization"]
    if not values:
        return None, "missing credentials: send the metadata 'authorization: Bearer <token>'"
    if len(values) > 1:
        return None, "more than one authorization header: send exactly one 'authorization: Bearer <token>'"
    value = values[0].decode("latin-1") if isinstance(values[0], bytes) else str(values[0])
    if not value.lower().startswith(_BEARER) or not value[len(_BEARER) :].strip():
        return None, "the authorization metadata must be 'Bearer <token>'"
    return value[len(_BEARER) :].strip(), ""


# ------------------------------------------------------------------------------------------------ client


def channel_credentials(
    ca: Path | str | None = None, cert: Path | str | None = None, key: Path | str | None = None
) -> grpc.ChannelCredentials:
    """TLS credentials for a client: ``ca`` to trust (the system's roots when None), and optionally a
    client certificate and key for mutual TLS (both or neither)."""
    if (cert is None) != (key is None):
        raise SecurityError("a client certificate needs its key and a key its certificate (--tls-cert, --tls-key)")
    return grpc.ssl_channel_credentials(
        root_certificates=read_secret_file(ca, "CA certificate (--tls-ca)") if ca is not None else None,
        private_key=read_secret_file(key, "client key (--tls-key)") if key is not None else None,
        certificate_chain=read_secret_file(cert, "client certificate (--tls-cert)") if cert is not None else None,
    )


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying ``token``; empty without one."""
    if not token:
        return ()
    if not _TOKEN_PATTERN.fullmatch(token):
        raise SecurityError("the token has spaces or characters that cannot travel in gRPC metadata")
    return (("authorization", f"Bearer {token}"),)
