"""Who may talk to the server, and what never leaves it: TLS, mutual TLS, bearer tokens, guarded requests.

Server side, all driven by :class:`~service.config.Settings`:

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

Client side: :func:`channel_credentials` and :func:`bearer_metadata`, used by :class:`service.client.HarkClient`.

Debug capture (:class:`AudioCapture`) lives here because it is the one place audio may be written out:
opt-in (``debug_capture_dir``), bounded per stream (``debug_capture_max_bytes``) and in total.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import grpc
import numpy as np
import soundfile as sf
from google.protobuf.message import DecodeError

from service.audio import PCM_F32LE, PCM_S16LE
from service.config import Settings
from service.logging import get_logger

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


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (or mutual TLS) credentials for the listening port; None when TLS is not configured."""
    cert, key, client_ca = settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
    if cert is None and key is None:
        if client_ca is not None:
            raise SecurityError("tls_client_ca_file needs tls_cert_file and tls_key_file: mutual TLS is TLS first")
        return None
    if cert is None or key is None:
        raise SecurityError("set both tls_cert_file and tls_key_file (HARK_TLS_CERT_FILE, HARK_TLS_KEY_FILE)")
    pair = (read_secret_file(key, "TLS key (tls_key_file)"), read_secret_file(cert, "TLS certificate (tls_cert_file)"))
    roots = read_secret_file(client_ca, "client CA (tls_client_ca_file)") if client_ca is not None else None
    return grpc.ssl_server_credentials([pair], root_certificates=roots, require_client_auth=roots is not None)


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


Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]
# Told the status code of every call an interceptor refuses: these calls never reach the servicer, which
# counts every other refusal in hark_errors_total.
RefusalObserver = Callable[[str], None]


def _ignore_refusal(code: str) -> None:
    pass


def _refusing_handler(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that ends the call with ``code`` without reading it.

    Its deserializer keeps the raw bytes: an unauthenticated request is never parsed.
    """

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    def raw(data: bytes) -> bytes:
        return data

    serializer = handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, raw, serializer)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, raw, serializer)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, raw, serializer)
    return grpc.unary_unary_rpc_method_handler(refuse, raw, serializer)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """``UNAUTHENTICATED`` for any call without a valid bearer token, except the exempt method prefixes."""

    def __init__(
        self,
        verifier: TokenVerifier,
        exempt_prefixes: Sequence[str] = (),
        on_refusal: RefusalObserver = _ignore_refusal,
    ) -> None:
        self._verifier = verifier
        self._exempt = tuple(exempt_prefixes)
        self._on_refusal = on_refusal
        self.refused = 0

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method.startswith(self._exempt):
            return await continuation(handler_call_details)
        token, reason = bearer_token(handler_call_details.invocation_metadata)
        if token is not None:
            if self._verifier.verify(token):
                return await continuation(handler_call_details)
            reason = "invalid token: it is not one this server accepts"
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: gRPC answers UNIMPLEMENTED either way
            return None
        self.refused += 1
        self._on_refusal(grpc.StatusCode.UNAUTHENTICATED.name)
        log.info("request refused", code="UNAUTHENTICATED", method=method, error=reason)  # never the token
        return _refusing_handler(handler, grpc.StatusCode.UNAUTHENTICATED, reason)


class _Malformed:
    """Stands in for a request whose bytes are not valid protobuf."""

    def __init__(self, error: DecodeError) -> None:
        self.error = error


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """A unary request that does not parse ends with ``INVALID_ARGUMENT`` and a message, not ``UNKNOWN``.

    gRPC parses a unary request before any handler runs, and a parse error becomes ``UNKNOWN`` with a
    traceback in the log for every such request. Here the deserializer is wrapped so the handler sees a
    placeholder and refuses it. Streaming requests are parsed by ``context.read()``, where the servicer
    catches the error itself.
    """

    def __init__(self, on_refusal: RefusalObserver = _ignore_refusal) -> None:
        self._on_refusal = on_refusal

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer
        behaviour = handler.unary_stream if handler.response_streaming else handler.unary_unary
        method = handler_call_details.method
        descriptor = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)  # Message.FromString's class
        what = descriptor.full_name if descriptor is not None else f"{method.rsplit('/', 1)[-1]} request"

        def tolerant(data: bytes) -> Any:
            try:
                return parse(data)
            except DecodeError as e:
                return _Malformed(e)

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Malformed):
                message = f"the request is not a valid {what} (malformed protobuf)"
                self._on_refusal(grpc.StatusCode.INVALID_ARGUMENT.name)
                log.info("request refused", code="INVALID_ARGUMENT", method=method, error=message)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
            return await behaviour(request, context)

        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(guarded, tolerant, handler.response_serializer)
        return grpc.unary_unary_rpc_method_handler(guarded, tolerant, handler.response_serializer)


def server_interceptors(
    settings: Settings, on_refusal: RefusalObserver = _ignore_refusal
) -> list[grpc.aio.ServerInterceptor]:
    """The interceptors ``start_server`` installs: token auth (first, when configured), then the request guard;
    each tells ``on_refusal`` the code of every call it refuses."""
    interceptors: list[grpc.aio.ServerInterceptor] = []
    tokens = load_tokens(settings)
    if tokens:
        exempt = [HEALTH_PREFIX] if settings.auth_exempt_health else []
        if settings.auth_exempt_reflection:
            exempt += REFLECTION_PREFIXES
        interceptors.append(TokenAuthInterceptor(TokenVerifier(tokens), exempt, on_refusal))
    interceptors.append(MalformedRequestInterceptor(on_refusal))
    return interceptors


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


# ------------------------------------------------------------------------------------- debug capture


class AudioCapture:
    """Writes the first ``max_bytes`` of each stream's PCM to ``<dir>/<stream_id>.wav``, for debugging.

    Off unless ``debug_capture_dir`` is set. Bounded twice: per stream by ``max_bytes``, and in total by
    ``max_files`` (the oldest stays; new streams stop being captured), so a busy server cannot fill its
    disk. Files are written once, when the stream ends, with owner-only permissions.
    """

    def __init__(self, directory: Path, max_bytes: int, max_files: int = 100) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_files = max_files
        self._lock = threading.Lock()
        self._written = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> AudioCapture | None:
        if settings.debug_capture_dir is None or settings.debug_capture_max_bytes <= 0:
            return None
        directory = settings.debug_capture_dir
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return cls(directory, settings.debug_capture_max_bytes)

    def stream(self, stream_id: str, sample_rate: int, encoding: str) -> StreamCapture:
        return StreamCapture(self, stream_id, sample_rate, encoding)

    def _claim(self) -> bool:
        with self._lock:
            if self._written >= self.max_files:
                return False
            self._written += 1
            return True


class StreamCapture:
    """One stream's captured bytes; :meth:`write` saves them (call it off the event loop)."""

    def __init__(self, owner: AudioCapture, stream_id: str, sample_rate: int, encoding: str) -> None:
        self._owner = owner
        self.path = owner.directory / f"{re.sub(r'[^0-9a-zA-Z_-]', '_', stream_id)}.wav"
        self.sample_rate = sample_rate
        self.encoding = encoding
        self._chunks: list[bytes] = []
        self._size = 0

    def add(self, pcm: bytes) -> None:
        room = self._owner.max_bytes - self._size
        if room > 0 and pcm:
            piece = pcm[:room]
            self._chunks.append(piece)
            self._size += len(piece)

    def write(self) -> Path | None:
        """Save the captured audio as WAV; None when there is none or the capture budget is spent."""
        data = b"".join(self._chunks)
        width = 2 if self.encoding == PCM_S16LE else 4
        data = data[: len(data) - len(data) % width]
        if not data or not self._owner._claim():
            return None
        if self.encoding == PCM_F32LE:
            samples, subtype = np.frombuffer(data, dtype="<f4"), "FLOAT"
        else:
            samples, subtype = np.frombuffer(data, dtype="<i2"), "PCM_16"
        partial = self.path.with_name(self.path.name + ".part")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "wb") as f:
            sf.write(f, samples, self.sample_rate, subtype=subtype, format="WAV")
        os.replace(partial, self.path)  # whoever lists the folder sees whole files only
        return self.path
