"""The Open Inference Protocol's REST routes (KServe v2) on their own HTTP port, with aiohttp.

Routes: ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2``, ``GET /v2/models/{name}[/versions/{v}]``,
``GET .../ready``, ``POST .../infer`` and Triton's ``POST /v2/repository/index``. Tensors come as JSON ``data``
or in Triton's binary tensor extension (the ``Inference-Header-Content-Length`` header; what
``tritonclient.http`` sends by default); answers are JSON. Errors are ``{"error": "..."}`` with the HTTP
status of the refusal. Tokens and TLS as on every port: ``Authorization: Bearer <token>`` (the health
routes are exempt while ``auth_exempt_health`` is on).

Hostile clients: ``infer`` is judged at its headers, before its body is read. The token (the ``_auth``
middleware), then a declared ``Content-Length`` over ``max_message_bytes`` (413), then a clip slot in the
server's :class:`~hark.serving.admission.Admission` (429 when full, counted per peer address and token like
every other call); only then is the body read, within ``request_timeout_s`` (408 when it does not arrive).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from aiohttp import web

from hark.log_sampling import LogSampler
from hark.logging import get_logger
from hark.security import TokenVerifier
from hark.serving.admission import client_keys
from hark.serving.errors import HTTP_STATUS, REFUSALS, Refusal, refusal_of
from hark.serving.metrics import HarkMetrics
from hark.transports.http_security import bearer_of
from hark.transports.oip import tensors
from hark.transports.oip.plane import InferResult, OipPlane
from hark.transports.oip.tensors import Tensor, invalid

HEADER_LENGTH = "Inference-Header-Content-Length"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = get_logger("hark.oip")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _shape(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise invalid(f"input {name!r}: shape must be a list of whole numbers")
    return value


def inputs_of(header: dict[str, Any], binary: bytes) -> list[Tensor]:
    """The request's input tensors, from JSON ``data`` or the binary section after the JSON header."""
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list):
        raise invalid("the request needs an 'inputs' list")
    out, offset = [], 0
    for item in raw_inputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise invalid("each input needs a name, a shape, a datatype and data")
        name, datatype = item["name"], item.get("datatype")
        shape = _shape(item.get("shape"), name)
        if not isinstance(datatype, str):
            raise invalid(f"input {name!r}: datatype must be a string")
        params = item.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise invalid(f"input {name!r}: binary_data_size {size} does not fit the binary data")
            tensor = tensors.from_raw(name, datatype, shape, binary[offset : offset + size])
            offset += size
        elif "data" in item:
            tensor = tensors.from_list(name, datatype, shape, item["data"])
        else:
            raise invalid(f"input {name!r} has neither data nor binary_data_size")
        tensor.parameters = params if isinstance(params, dict) else {}
        out.append(tensor)
    return out


def _json_data(t: Tensor) -> list[Any]:
    if t.datatype == "BYTES":
        return [bytes(b).decode("utf-8", errors="replace") for b in t.data.ravel()]
    return np.asarray(t.data).ravel().tolist()


class OipRest:
    """The v2 REST routes as an aiohttp application, started on its own port by :meth:`start`."""

    def __init__(
        self,
        oip: OipPlane,
        metrics: HarkMetrics,
        verifier: TokenVerifier | None,
        exempt_health: bool,
        max_bytes: int,
        request_timeout_s: float = 10.0,
    ) -> None:
        self.oip = oip
        self.max_bytes = max_bytes
        self.request_timeout_s = request_timeout_s
        self._refused_log = LogSampler(20)  # a flood of refusals: 20 lines a second (each still counted)
        self.metrics = metrics
        self.verifier = verifier
        self.exempt_health = exempt_health
        self.app = web.Application(client_max_size=max_bytes, middlewares=[self._auth, self._refusals])
        r = self.app.router
        r.add_get("/v2/health/live", self.live)
        r.add_get("/v2/health/ready", self.ready)
        r.add_get("/v2", self.server_metadata)
        r.add_post("/v2/repository/index", self.repository_index)
        for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            r.add_get(base, self.model_metadata)
            r.add_get(base + "/ready", self.model_ready)
            r.add_post(base + "/infer", self.infer)
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int, ssl: Any = None) -> int:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl, reuse_port=False)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        return self.port

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.verifier is None or (self.exempt_health and request.path.startswith("/v2/health/")):
            return await handler(request)
        token, why = bearer_of(request.headers.get("Authorization"))
        if token is None or not self.verifier.verify(token):
            self.metrics.error("UNAUTHENTICATED")
            return _error(401, why or "invalid token", {"WWW-Authenticate": "Bearer"})
        return await handler(request)

    @web.middleware
    async def _refusals(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as e:  # aiohttp's own refusals (no route, body too large) as JSON errors too
            if e.status < 400:
                raise
            return _error(e.status, e.text or e.reason)
        except REFUSALS as e:
            refusal = refusal_of(e)
            self.metrics.error(refusal.code)
            if (skipped := self._refused_log.allow()) is not None:
                log.info(
                    "request refused", path=request.path, code=refusal.code, error=refusal.message, skipped=skipped
                )
            headers = {"Retry-After": str(max(1, refusal.retry_after_ms // 1000))} if refusal.retry_after_ms else None
            return _error(HTTP_STATUS[refusal.code], refusal.message, headers)

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        ready = self.oip.ready()
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(self.oip.server_metadata())

    async def repository_index(self, request: web.Request) -> web.Response:
        body = await request.read()
        ready_only = bool(json.loads(body).get("ready", False)) if body.strip() else False
        return web.json_response(self.oip.repository_index(ready_only))

    async def model_metadata(self, request: web.Request) -> web.Response:
        info = request.match_info
        return web.json_response(self.oip.model_metadata(info["name"], info.get("version", "")))

    async def model_ready(self, request: web.Request) -> web.Response:
        info = request.match_info
        ready = self.oip.model_ready(info["name"], info.get("version", ""))
        return web.json_response({"name": info["name"], "ready": ready}, status=200 if ready else 400)

    async def infer(self, request: web.Request) -> web.Response:
        self.metrics.request("ModelInfer")
        declared = request.content_length
        if declared is not None and declared > self.max_bytes:
            self.metrics.error("RESOURCE_EXHAUSTED")
            return _error(413, f"the body declares {declared} bytes; the limit is {self.max_bytes}")
        token, _ = bearer_of(request.headers.get("Authorization"))
        with self.oip.admit(client_keys(request.remote or "unknown", token)):
            body = await self._body(request)
            return await self._infer(request, body)

    async def _body(self, request: web.Request) -> bytes:
        try:
            async with asyncio.timeout(self.request_timeout_s):
                return await request.read()
        except TimeoutError:
            raise Refusal(
                "DEADLINE_EXCEEDED",
                f"the request body did not arrive whole within {self.request_timeout_s:g} s; send it at once",
            ) from None

    async def _infer(self, request: web.Request, body: bytes) -> web.Response:
        info = request.match_info
        header_length = request.headers.get(HEADER_LENGTH)
        try:
            length = int(header_length) if header_length is not None else len(body)
            if not 0 <= length <= len(body):
                raise ValueError
            header = json.loads(body[:length])
        except ValueError:
            raise invalid("the request body is not a JSON inference request") from None
        if not isinstance(header, dict):
            raise invalid("the request body must be a JSON object")
        params = header.get("parameters") or {}
        if not isinstance(params, dict):
            raise invalid("'parameters' must be a JSON object")
        outputs = header.get("outputs") or []
        if not isinstance(outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
        ):
            raise invalid("'outputs' must be a list of objects, each with a name")
        requested: list[str] = [o["name"] for o in outputs]
        result: InferResult = await self.oip.infer_admitted(
            info["name"], info.get("version", ""), inputs_of(header, body[length:]), params, requested
        )
        reply: dict[str, Any] = {
            "model_name": result.model.name,
            "model_version": str(result.model.version),
            "outputs": [
                {"name": t.name, "datatype": t.datatype, "shape": t.shape, "data": _json_data(t)}
                for t in result.outputs
            ],
        }
        if isinstance(header.get("id"), str):
            reply["id"] = header["id"]
        return web.json_response(reply)
