"""gRPC's share of security: the port's TLS credentials and the interceptors that refuse at the headers.

Token parsing and checking are transport-neutral (:mod:`hark.security`); here they are applied to gRPC
calls: :class:`TokenAuthInterceptor` ends a call without a valid bearer token before its request is parsed,
:class:`MalformedRequestInterceptor` turns an unparsable unary request into ``INVALID_ARGUMENT``.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from hark.config import Settings
from hark.core.text import quote
from hark.log_sampling import LogSampler
from hark.logging import get_logger
from hark.security import (
    HEALTH_PREFIX,
    REFLECTION_PREFIXES,
    TokenVerifier,
    bearer_token,
    load_tokens,
    read_secret_file,
    tls_files,
)
from hark.serving.admission import client_keys

log = get_logger("hark.security")

CLASSIFIER_PREFIX = "/hark.v1.Classifier/"


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (or mutual TLS) credentials for the listening port; None when TLS is not configured."""
    if (files := tls_files(settings)) is None:
        return None
    cert, key, client_ca = files
    pair = (read_secret_file(key, "TLS key (tls_key_file)"), read_secret_file(cert, "TLS certificate (tls_cert_file)"))
    roots = read_secret_file(client_ca, "client CA (tls_client_ca_file)") if client_ca is not None else None
    return grpc.ssl_server_credentials([pair], root_certificates=roots, require_client_auth=roots is not None)


def client_keys_of(context: grpc.aio.ServicerContext) -> tuple[str, ...]:
    """What a call counts against ``max_streams_per_client``: its connection, and its bearer token."""
    token = None
    with contextlib.suppress(Exception):  # metadata the client mangled: the connection key still applies
        token, _ = bearer_token(context.invocation_metadata())
    return client_keys(context.peer(), token)


Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]
# Told the status code of every call an interceptor refuses: these calls never reach the servicer, which
# counts every other refusal in hark_errors_total.
RefusalObserver = Callable[[str], None]


def _ignore_refusal(code: str) -> None:
    pass


def _refusing_handler(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler that ends the call with ``code`` at once, without reading or parsing its request.

    Always request-streaming, whatever the method: gRPC reads a unary request whole before its handler
    runs, so a refused unary call could still make the server buffer megabytes (hostile clients: 200
    unauthenticated 4 MB ``Classify`` calls held 700 MB). A streaming handler runs at the headers; the
    call's unread bytes are dropped with it. The client cannot tell: the status is the same.
    """

    async def refuse(requests: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    def raw(data: bytes) -> bytes:
        return data

    serializer = handler.response_serializer
    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, raw, serializer)
    return grpc.stream_unary_rpc_method_handler(refuse, raw, serializer)


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
        self._log = LogSampler(20)

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
        if (skipped := self._log.allow()) is not None:  # a flood of unauthenticated calls: 20 lines a second
            # never the token; the method is the client's string, so quoted short
            log.info("request refused", code="UNAUTHENTICATED", method=quote(method), error=reason, skipped=skipped)
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


class CallLimitInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """At most ``limit`` concurrent calls outside the ``exempt`` method prefixes (the classification
    services, which :class:`~hark.serving.admission.Admission` bounds): health watches, reflection.

    These had no bound (hostile clients: 5,000 health watches, exempt from authentication, held 74 MiB).
    Past the limit a call ends ``RESOURCE_EXHAUSTED``.
    """

    def __init__(
        self,
        limit: int,
        exempt: Sequence[str] = (CLASSIFIER_PREFIX,),
        on_refusal: RefusalObserver = _ignore_refusal,
    ) -> None:
        self.limit = limit
        self.active = 0
        self._exempt = tuple(exempt)
        self._on_refusal = on_refusal

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(self._exempt):
            return handler
        behaviour = handler.stream_stream or handler.stream_unary or handler.unary_stream or handler.unary_unary
        limiter = self

        async def refuse_if_full(context: grpc.aio.ServicerContext) -> None:
            if limiter.active >= limiter.limit:
                limiter._on_refusal(grpc.StatusCode.RESOURCE_EXHAUSTED.name)
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"server is at its limit of {limiter.limit} concurrent calls of this kind; retry later",
                )

        if inspect.isasyncgenfunction(behaviour):

            async def limited_gen(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await refuse_if_full(context)
                limiter.active += 1
                try:
                    async for response in behaviour(request, context):
                        yield response
                finally:
                    limiter.active -= 1

            wrapped: Any = limited_gen
        else:

            async def limited(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await refuse_if_full(context)
                limiter.active += 1
                try:
                    return await behaviour(request, context)
                finally:
                    limiter.active -= 1

            wrapped = limited
        make = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(handler.request_streaming, handler.response_streaming)]
        return make(wrapped, handler.request_deserializer, handler.response_serializer)


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
