"""``inference.GRPCInferenceService`` on Hark's gRPC port: protobuf in and out over :class:`OipPlane`.

Refusals end a unary call with their status code, as on ``hark.v1.Classifier``. In ``ModelStreamInfer`` a
request with Triton's ``sequence_id`` belongs to a sequence (one stream pipeline); one without is a whole
clip, answered as ``ModelInfer`` would. A refused request is answered with ``error_message``
(``"<STATUS>: <message>"``, as Triton does) and ends its sequence; the call and its other sequences go on.
A call silent for ``idle_timeout_s`` ends with ``DEADLINE_EXCEEDED``, and its open sequences with it.

``ModelInfer`` is admitted at its headers, as ``Classify`` is (:func:`add_to_server` registers it as
request-streaming): a clip slot is taken before its body is read, and an admitted request has
``request_timeout_s`` to arrive whole. Hostile clients: registered unary, gRPC buffered every request's
megabytes before any limit of Hark's could count it.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError

from hark.log_sampling import LogSampler
from hark.logging import get_logger
from hark.oip import inference_pb2 as pb
from hark.oip import inference_pb2_grpc
from hark.serving.errors import REFUSALS, Refusal, refusal_of
from hark.serving.metrics import HarkMetrics
from hark.transports.grpc.security import client_keys_of
from hark.transports.grpc.whole import read_whole
from hark.transports.oip import tensors
from hark.transports.oip.plane import InferResult, OipPlane, Sequences
from hark.transports.oip.tensors import Tensor, invalid

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

log = get_logger("hark.oip")


def parameters_of(params: Any) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as plain values."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        kind = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, kind) if kind else None
    return out


def _set_parameter(target: Any, key: str, value: Any) -> None:
    if isinstance(value, bool):
        target[key].bool_param = value
    elif isinstance(value, int):
        target[key].int64_param = value
    else:
        target[key].string_param = str(value)


_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def inputs_of(request: pb.ModelInferRequest) -> list[Tensor]:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise invalid(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; send one per input")
    out = []
    for i, t in enumerate(request.inputs):
        shape = list(t.shape)
        if raw:
            out.append(tensors.from_raw(t.name, t.datatype, shape, raw[i]))
        else:
            field = _CONTENTS.get(t.datatype)
            if field is None:
                raise invalid(f"input {t.name!r}: datatype {t.datatype!r} is not an Open Inference Protocol datatype")
            out.append(tensors.from_list(t.name, t.datatype, shape, list(getattr(t.contents, field))))
        out[-1].parameters = parameters_of(t.parameters)
    return out


def infer_response(request: pb.ModelInferRequest, result: InferResult) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(
        model_name=result.model.name, model_version=str(result.model.version), id=request.id
    )
    for t in result.outputs:
        response.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        response.raw_output_contents.append(tensors.raw_of(t))
    return response


class InferenceService(inference_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self, oip: OipPlane, metrics: HarkMetrics, idle_timeout_s: float, request_timeout_s: float = 10.0
    ) -> None:
        self.oip = oip
        self.metrics = metrics
        self.idle_timeout_s = idle_timeout_s
        self.request_timeout_s = request_timeout_s
        self._refused_log = LogSampler(20)  # a flood of refusals: 20 lines a second (each still counted)

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.oip.ready())

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.oip.model_ready(request.name, request.version))

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**self.oip.server_metadata())

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        try:
            meta = self.oip.model_metadata(request.name, request.version)
        except REFUSALS as e:
            await self._abort(context, e)
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]],
        )

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        models = self.oip.repository_index(request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**m) for m in models])

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        """``ModelInfer`` as the generated stubs register it (a unary handler: gRPC reads the whole body
        before it runs). :func:`add_to_server` registers :meth:`ModelInferAdmitted` instead."""
        return await self._model_infer(context, request)

    async def ModelInferAdmitted(self, requests: Any, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        """``ModelInfer`` as :func:`add_to_server` registers it: admitted before its body is read."""
        return await self._model_infer(context, requests)

    async def _model_infer(self, context: grpc.aio.ServicerContext, source: Any) -> pb.ModelInferResponse:
        """One ``ModelInfer`` call: a slot at the headers, then the request (given, or read within
        ``request_timeout_s``), then its clips classified."""
        self.metrics.request("ModelInfer")
        try:
            with self.oip.admit(client_keys_of(context)):
                request = source
                if not isinstance(request, pb.ModelInferRequest):
                    request = await read_whole(context, pb.ModelInferRequest, self.request_timeout_s)
                result = await self.oip.infer_admitted(
                    request.model_name,
                    request.model_version,
                    inputs_of(request),
                    parameters_of(request.parameters),
                    [o.name for o in request.outputs],
                )
        except REFUSALS as e:
            await self._abort(context, e)
        return infer_response(request, result)

    async def ModelStreamInfer(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        call_id = uuid.uuid4().hex[:12]
        self.metrics.request("ModelStreamInfer")
        sequences = Sequences(self.oip, call_id)
        try:
            while (request := await self._read(context)) is not None:
                parameters = parameters_of(request.parameters)
                infer = sequences.infer if "sequence_id" in parameters else self.oip.infer
                try:
                    result = await infer(
                        request.model_name,
                        request.model_version,
                        inputs_of(request),
                        parameters,
                        [o.name for o in request.outputs],
                    )
                except REFUSALS as e:
                    refusal = refusal_of(e)
                    self.metrics.error(refusal.code)
                    log.info("sequence request refused", call=call_id, code=refusal.code, error=refusal.message)
                    await context.write(pb.ModelStreamInferResponse(error_message=f"{refusal.code}: {refusal.message}"))
                    continue
                response = infer_response(request, result)
                for key in ("sequence_id", "sequence_start", "sequence_end"):
                    if key in parameters:
                        _set_parameter(response.parameters, key, parameters[key])
                await context.write(pb.ModelStreamInferResponse(infer_response=response))
        except Refusal as e:  # the call itself: idle, malformed
            await self._abort(context, e)
        except grpc.aio.AbortError:
            raise
        except Exception as e:  # a bug: say so, keep the details in the log, not on the wire
            log.exception("ModelStreamInfer failed", call=call_id)
            await self._abort(context, e)
        finally:
            sequences.close()

    async def _read(self, context: grpc.aio.ServicerContext) -> pb.ModelInferRequest | None:
        try:
            async with asyncio.timeout(self.idle_timeout_s):
                request = await context.read()
        except TimeoutError:
            raise Refusal(
                "DEADLINE_EXCEEDED", f"no message for {self.idle_timeout_s:g} s; send a request or close the stream"
            ) from None
        except DecodeError:
            raise invalid("a message is not a valid inference.ModelInferRequest (malformed protobuf)") from None
        if request is grpc.aio.EOF:
            return None
        assert isinstance(request, pb.ModelInferRequest)
        return request

    async def _abort(self, context: grpc.aio.ServicerContext, error: Exception) -> NoReturn:
        refusal = refusal_of(error)
        self.metrics.error(refusal.code)
        if (skipped := self._refused_log.allow()) is not None:
            log.info("request refused", code=refusal.code, error=refusal.message, skipped=skipped)
        trailers = (
            (("grpc-retry-pushback-ms", str(refusal.retry_after_ms)),) if refusal.retry_after_ms is not None else ()
        )
        await context.abort(grpc.StatusCode[refusal.code], refusal.message, trailers)
        raise AssertionError("context.abort returned")  # pragma: no cover


def add_to_server(service: InferenceService, server: grpc.aio.Server) -> None:
    """Register the service like ``add_GRPCInferenceServiceServicer_to_server``, but with ``ModelInfer`` as a
    request-streaming handler (:meth:`InferenceService.ModelInferAdmitted`): the same wire, the same clients."""
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        parse = getattr(pb, method.input_type.name).FromString
        serialize = getattr(pb, method.output_type.name).SerializeToString
        if method.name == "ModelInfer":
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(service.ModelInferAdmitted, parse, serialize)
            continue
        make = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = make(getattr(service, method.name), parse, serialize)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
