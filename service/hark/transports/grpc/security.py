"""gRPC's share of security: the port's TLS credentials and the interceptors that refuse at the headers.

Token parsing and checking are transport-neutral (:mod:`hark.security`); here they are applied to gRPC
calls: :class:`TokenAuthInterceptor` ends a call without a valid bearer token before its request is parsed,
:class:`MalformedRequestInterceptor` turns an unparsable unary request into ``INVALID_ARGUMENT``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from hark.config import Settings
from hark.logging import get_logger
from hark.security import (
    HEALTH_PREFIX,
    REFLECTION_PREFIXES,
    SecurityError,
    TokenVerifier,
    bearer_token,
    load_tokens,
    read_secret_file,
)

log = get_logger("hark.security")


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
