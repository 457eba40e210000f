"""The WebSocket transport: a thin adapter from WebSocket messages to the data plane, for browsers and scripts.

Read → ``pipeline.feed`` → convert → write, as the gRPC servicer does; the protocol (JSON config, binary
PCM, JSON results) is in :mod:`hark.transports.websocket.protocol`. The same :class:`Admission` (so
``max_streams`` and a drain count every transport's streams), the same limits and idle timeout, the same
tokens and TLS files as gRPC. The port also serves the browser page (``GET /``).

Authentication: an ``Authorization: Bearer <token>`` header on the upgrade request (a wrong one is refused
with HTTP 401 before the upgrade), or, for browsers that cannot set headers, ``token`` in the config message.

Per-client limits (``max_streams_per_client``), as on gRPC: a stream counts against its peer's address
(one WebSocket carries one stream, so the connection itself is no key) and against its token.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
import weakref
from http import HTTPStatus
from importlib import resources
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from hark.logging import get_logger
from hark.security import TokenVerifier
from hark.serving.admission import Admission, client_keys
from hark.serving.errors import REFUSALS, Refusal, refusal_of
from hark.serving.pipeline import DataPlane, StreamPipeline
from hark.serving.session import Scored
from hark.transports.http_security import bearer_of
from hark.transports.websocket import protocol

STREAM_PATH = "/v1/stream"
PAGE_PATHS = ("/", "/index.html")
RPC_NAME = "WebSocketStream"  # hark_requests_total{rpc=...}

log = get_logger("hark.websocket")


class _ClientStalled(Exception):
    """The client stopped reading: a send has waited ``idle_timeout_s`` on flow control."""


def _page() -> bytes:
    return resources.files("hark.transports.websocket").joinpath("static/index.html").read_bytes()


class WebSocketTransport:
    """Serves ``/v1/stream`` (the stream protocol) and ``/`` (the browser page) on one port."""

    def __init__(self, plane: DataPlane, admission: Admission, verifier: TokenVerifier | None) -> None:
        self.plane = plane
        self.admission = admission
        self.verifier = verifier
        self.settings = plane.settings
        self.metrics = plane.metrics
        self.idle_timeout_s = plane.settings.idle_timeout_s
        # Connections whose upgrade request carried a valid token (weak: a failed handshake never reaches _handle).
        self._header_authenticated: weakref.WeakSet[ServerConnection] = weakref.WeakSet()
        # Each connection's token, from its header or its config: its key for max_streams_per_client.
        self._tokens: weakref.WeakKeyDictionary[ServerConnection, str] = weakref.WeakKeyDictionary()
        self._server: Server | None = None
        self.port = 0

    async def start(self, host: str, port: int, ssl: Any = None) -> int:
        """Bind and serve; return the port (``port`` 0 picks a free one)."""
        self._server = await serve(
            self._handle,
            host,
            port,
            ssl=ssl,
            process_request=self._process_request,
            max_size=self.settings.max_message_bytes,  # a bigger frame is closed with 1009 by the library
            compression=None,  # audio does not compress; deflate would cost CPU per frame
            ping_interval=20,
            close_timeout=2,
        )
        self.port = int(next(iter(self._server.sockets)).getsockname()[1])
        return self.port

    async def close(self) -> None:
        """Close the port and any connection still open (1001, going away): after the drain."""
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Before the upgrade: serve the page, refuse unknown paths and wrong tokens with HTTP statuses."""
        path = request.path.split("?", 1)[0]
        if path in PAGE_PATHS and "upgrade" not in request.headers.get("Connection", "").lower():
            response = connection.respond(HTTPStatus.OK, "")
            response.body = _page()
            del response.headers["Content-Type"], response.headers["Content-Length"]
            response.headers["Content-Type"] = "text/html; charset=utf-8"
            response.headers["Content-Length"] = str(len(response.body))
            response.headers["Cache-Control"] = "no-store"
            return response
        if path != STREAM_PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, f"not found: streams are at {STREAM_PATH}\n")
        header = request.headers.get("Authorization")
        if self.verifier is not None and header is not None:
            token, why = bearer_of(header)
            if token is None or not self.verifier.verify(token):
                self.metrics.error("UNAUTHENTICATED")
                return connection.respond(HTTPStatus.UNAUTHORIZED, (why or "invalid token") + "\n")
            self._header_authenticated.add(connection)
            self._tokens[connection] = token
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        stream_id = uuid.uuid4().hex[:12]
        slog = log.bind(stream_id=stream_id, transport="websocket")
        self.metrics.request(RPC_NAME)
        try:
            first = await self._recv(ws, first=True)
            self._authenticate(ws, protocol.token_of(first))  # before the message is judged
            options = protocol.parse_config(first)
            with (
                self.admission.stream(self._client_keys(ws)),
                self.admission.fast() if options.fast else contextlib.nullcontext(),
            ):
                await self._stream(ws, options, stream_id, slog)
            await ws.close(1000, "end of stream")
        except REFUSALS as e:
            await self._refuse(ws, slog, e)
        except _ClientStalled as e:
            await self._refuse(ws, slog, Refusal("DEADLINE_EXCEEDED", str(e)))
        except ConnectionClosed:
            slog.info("stream ended by the client")
        except Exception as e:  # a bug: say so, keep the details in the log, not on the wire
            slog.exception("stream failed")
            await self._refuse(ws, slog, e)
        finally:
            self._header_authenticated.discard(ws)
            self._tokens.pop(ws, None)

    def _client_keys(self, ws: ServerConnection) -> tuple[str, ...]:
        """The peer's address (not its port: one connection is one stream here) and the token, if any."""
        address = ws.remote_address
        host = str(address[0]) if isinstance(address, tuple) and address else "unknown"
        return client_keys(host, self._tokens.get(ws))

    def _authenticate(self, ws: ServerConnection, token: str | None) -> None:
        if self.verifier is None or ws in self._header_authenticated:
            return
        if token is None:
            raise Refusal(
                "UNAUTHENTICATED",
                "missing credentials: send 'Authorization: Bearer <token>' or config.token in the first message",
            )
        if not self.verifier.verify(token):
            raise Refusal("UNAUTHENTICATED", "invalid token")
        self._tokens[ws] = token

    async def _stream(self, ws: ServerConnection, options: Any, stream_id: str, slog: Any) -> None:
        started = time.monotonic()
        pipeline: StreamPipeline
        with self.plane.open_stream(options, stream_id) as pipeline:
            session = pipeline.session
            slog = slog.bind(model=pipeline.model.name, version=pipeline.model.version)
            slog.info("stream started", sample_rate_hz=session.sample_rate, encoding=session.encoding)
            await self._send(ws, protocol.started(pipeline.model))
            last_audio = time.monotonic()  # idle means no audio: empty frames do not keep a stream alive
            while True:
                message = await self._recv(ws, since=last_audio)
                if isinstance(message, str) and protocol.is_end(message):
                    break
                assert isinstance(message, bytes)
                await self._send_results(ws, pipeline, await pipeline.feed(message))
                if message:
                    last_audio = time.monotonic()
            await self._send_results(ws, pipeline, await pipeline.finish())
        slog.info(
            "stream finished",
            audio_s=round(session.audio_s, 3),
            windows=session.windows,
            events=session.events,
            wall_s=round(time.monotonic() - started, 3),
        )

    async def _recv(self, ws: ServerConnection, first: bool = False, since: float | None = None) -> str | bytes:
        """The next message; without audio since ``since`` (monotonic; now when None) for ``idle_timeout_s``,
        the stream is ended."""
        left = self.idle_timeout_s - (time.monotonic() - since) if since is not None else self.idle_timeout_s
        try:
            async with asyncio.timeout(max(0.0, left)):
                return await ws.recv()
        except TimeoutError:
            what = "the config" if first else "audio or the end message"
            raise Refusal(
                "DEADLINE_EXCEEDED", f"no message for {self.idle_timeout_s:g} s; send {what} or close the stream"
            ) from None

    async def _send(self, ws: ServerConnection, message: str) -> None:
        try:
            async with asyncio.timeout(self.idle_timeout_s):
                await ws.send(message)
        except TimeoutError:
            raise _ClientStalled(
                f"responses were not read for {self.idle_timeout_s:g} s; read the stream while sending"
            ) from None

    async def _send_results(self, ws: ServerConnection, pipeline: StreamPipeline, results: list[Scored]) -> None:
        for scored in results:
            for message in protocol.responses(scored, pipeline.emit_scores):
                await self._send(ws, message)

    async def _refuse(self, ws: ServerConnection, slog: Any, error: Exception) -> None:
        """Send the refusal as an ``error`` message, then close with 4000 + its HTTP status."""
        refusal = refusal_of(error)
        self.metrics.error(refusal.code)
        if refusal.code == "INTERNAL":
            slog.error("request failed", code=refusal.code, error=refusal.message)
        else:
            slog.info("request refused", code=refusal.code, error=refusal.message)
        try:
            async with asyncio.timeout(1.0):  # a stalled client gets no more than a second
                await ws.send(protocol.error(refusal))
        except (TimeoutError, ConnectionClosed):
            pass
        reason = refusal.message.encode()[:120].decode(errors="ignore")
        with contextlib.suppress(ConnectionClosed):
            await ws.close(protocol.close_code(refusal), reason)
