"""Security for the HTTP-based transports (WebSocket, Open Inference Protocol REST): TLS and bearer tokens.

The same settings as gRPC mean the same thing here: ``tls_cert_file`` + ``tls_key_file`` make the port
TLS only, ``tls_client_ca_file`` adds mutual TLS, and the configured tokens (checked by the
transport-neutral :class:`~hark.security.TokenVerifier`) are required as ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import ssl

from hark.config import Settings
from hark.security import SecurityError, TokenVerifier, load_tokens, tls_files

_BEARER = "bearer "


def server_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """A TLS (or mutual TLS) context for an HTTP or WebSocket port; None when TLS is not configured."""
    if (files := tls_files(settings)) is None:
        return None
    cert, key, client_ca = files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
        if client_ca is not None:
            context.load_verify_locations(cafile=str(client_ca))
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as e:
        raise SecurityError(f"cannot load the TLS files for the HTTP ports: {e}") from e
    return context


def token_verifier(settings: Settings) -> TokenVerifier | None:
    """The verifier for the configured tokens; None when token authentication is off."""
    tokens = load_tokens(settings)
    return TokenVerifier(tokens) if tokens else None


def bearer_of(header: str | None) -> tuple[str | None, str]:
    """The token in an ``Authorization`` header value, or None and why it is missing."""
    if header is None:
        return None, "missing credentials: send the header 'Authorization: Bearer <token>'"
    if not header.lower().startswith(_BEARER) or not header[len(_BEARER) :].strip():
        return None, "the Authorization header must be 'Bearer <token>'"
    return header[len(_BEARER) :].strip(), ""
