"""The Open Inference Protocol's view of the data plane, shared by its gRPC service and its REST routes.

Each Hark model is an OIP model (its versions are OIP versions); :mod:`hark.transports.oip.tensors` says
what its inputs and outputs are. ``ModelInfer`` classifies clips with :meth:`DataPlane.classify`; a
``ModelStreamInfer`` sequence (Triton's ``sequence_id`` / ``sequence_start`` / ``sequence_end`` request
parameters) is one :class:`~hark.serving.pipeline.StreamPipeline`, each request's audio one ``feed``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any, Final

from hark.core.model_store import LoadedModel
from hark.serving.admission import Admission
from hark.serving.errors import Refusal
from hark.serving.pipeline import DataPlane, StreamOptions, StreamPipeline
from hark.transports.oip import tensors
from hark.transports.oip.tensors import Tensor, invalid

SERVER_NAME: Final = "hark"
EXTENSIONS: Final = ("model_repository", "sequence", "binary_tensor_data")
PLATFORM: Final = "onnxruntime_onnx"


def server_version() -> str:
    try:
        return package_version("hark")
    except PackageNotFoundError:  # pragma: no cover - a checkout without an install
        return "0.0.0"


def parse_version(version: str) -> int:
    """An OIP version string as Hark's: empty = the newest."""
    if version == "":
        return 0
    if not version.isdigit() or int(version) < 1:
        raise invalid(f"model version {version!r} is not a whole number >= 1 (or empty for the newest)")
    return int(version)


@dataclass
class InferResult:
    model: LoadedModel
    outputs: list[Tensor]


class OipPlane:
    """Readiness, metadata and inference in OIP terms, over the server's :class:`DataPlane` and :class:`Admission`."""

    def __init__(self, plane: DataPlane, admission: Admission) -> None:
        self.plane = plane
        self.admission = admission

    def ready(self) -> bool:
        return not self.admission.draining and bool(self.plane.models())

    def resolve(self, name: str, version: str) -> LoadedModel:
        """The served version, or the refusal (INVALID_ARGUMENT, NOT_FOUND) that says why not."""
        return self.plane.resolve(name, parse_version(version))

    def model_ready(self, name: str, version: str) -> bool:
        try:
            self.resolve(name, version)
        except (Refusal, LookupError, ValueError):
            return False
        return not self.admission.draining

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": server_version(), "extensions": list(EXTENSIONS)}

    def model_metadata(self, name: str, version: str) -> dict[str, Any]:
        model = self.resolve(name, version)
        _, versions = self.plane.model_versions(model.name)
        classes = len(model.manifest.labels)
        return {
            "name": model.name,
            "versions": [str(v) for v in sorted(versions)] if not version else [str(model.version)],
            "platform": PLATFORM,
            "inputs": [{"name": tensors.INPUT_NAME, "datatype": "INT16", "shape": [-1, -1]}],
            "outputs": [
                {"name": "scores", "datatype": "FP32", "shape": [-1, classes]},
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
                {"name": "labels", "datatype": "BYTES", "shape": [classes]},
            ],
        }

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        models = self.plane.models()
        return [
            {"name": name, "version": str(v), "state": "READY", "reason": ""}
            for name in sorted(models)
            for v in sorted(models[name])
        ]

    @contextlib.contextmanager
    def admit(self, clients: Sequence[str] = ()) -> Iterator[None]:
        """A clip slot, like gRPC's ``Classify`` (``max_clip_calls``, ``max_streams``, the per-client limit):
        taken before the request's body is read (hostile clients), held until it is answered."""
        with self.admission.clip(clients):
            yield

    async def infer(
        self, name: str, version: str, inputs: list[Tensor], parameters: dict[str, Any], requested: list[str]
    ) -> InferResult:
        """Admit, then classify (a whole-clip request of ``ModelStreamInfer``, whose body is already read)."""
        with self.admit():
            return await self.infer_admitted(name, version, inputs, parameters, requested)

    async def infer_admitted(
        self, name: str, version: str, inputs: list[Tensor], parameters: dict[str, Any], requested: list[str]
    ) -> InferResult:
        """Classify each clip of the ``audio`` input; the caller holds a slot from :meth:`admit`."""
        model = self.resolve(name, version)
        clips, encoding = tensors.audio_input(inputs)
        rate = tensors.sample_rate(parameters)
        results = [
            await self.plane.classify(
                pcm, sample_rate_hz=rate, encoding=encoding, model=model.name, version=model.version
            )
            for pcm in clips
        ]
        return InferResult(model, tensors.select(tensors.clip_outputs(results), requested))


@dataclass
class _Sequence:
    pipeline: StreamPipeline
    resources: contextlib.ExitStack


class Sequences:
    """The open sequences of one ``ModelStreamInfer`` call: each one pipeline, holding a stream slot."""

    def __init__(self, oip: OipPlane, call_id: str) -> None:
        self.oip = oip
        self.call_id = call_id
        self._open: dict[str | int, _Sequence] = {}

    def __len__(self) -> int:
        return len(self._open)

    async def infer(
        self, name: str, version: str, inputs: list[Tensor], parameters: dict[str, Any], requested: list[str]
    ) -> InferResult:
        """One request of a sequence: start it, feed its audio, end it, as its parameters say."""
        sequence_id = parameters.get("sequence_id")
        if sequence_id in (None, 0, "") or isinstance(sequence_id, bool):
            raise invalid("the parameter sequence_id must be a non-zero integer or a non-empty string")
        start, end = parameters.get("sequence_start", False), parameters.get("sequence_end", False)
        if start:
            if sequence_id in self._open:
                raise invalid(f"sequence {sequence_id} is already running; end it before starting it again")
            self._open[sequence_id] = self._start(name, version, tensors.sample_rate(parameters), sequence_id, inputs)
        elif sequence_id not in self._open:
            raise invalid(f"sequence {sequence_id} was not started: set sequence_start on its first request")
        sequence = self._open[sequence_id]
        try:
            pipeline = sequence.pipeline
            if name and name != pipeline.model.name:
                raise invalid(f"sequence {sequence_id} runs model {pipeline.model.name!r}, not {name!r}")
            clips, encoding = tensors.audio_input(inputs)
            if encoding != pipeline.session.encoding:
                raise invalid(f"sequence {sequence_id} started with other samples; keep one datatype per sequence")
            if len(clips) != 1:
                raise invalid("a sequence request carries one chunk: input 'audio' of shape [samples] or [1, samples]")
            results = await pipeline.feed(clips[0])
            if end:
                results += await pipeline.finish()
        except BaseException:
            self.end(sequence_id)  # a refused or failed request ends its sequence
            raise
        if end:
            self.end(sequence_id)
        n_classes = len(pipeline.model.manifest.labels)
        return InferResult(pipeline.model, tensors.select(tensors.stream_outputs(results, n_classes), requested))

    def _start(self, name: str, version: str, rate: int, sequence_id: str | int, inputs: list[Tensor]) -> _Sequence:
        if not inputs or inputs[0].datatype not in tensors.AUDIO_DATATYPES:
            tensors.audio_input(inputs)  # raises the refusal that says what to send
        encoding = tensors.AUDIO_DATATYPES[inputs[0].datatype]
        options = StreamOptions(
            model=name, version=parse_version(version), sample_rate_hz=rate, encoding=encoding, emit_scores=True
        )
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(self.oip.admission.stream())
            pipeline = stack.enter_context(self.oip.plane.open_stream(options, f"{self.call_id}/{sequence_id}"))
        except BaseException:
            stack.close()
            raise
        return _Sequence(pipeline, stack)

    def end(self, sequence_id: str | int) -> None:
        sequence = self._open.pop(sequence_id, None)
        if sequence is not None:
            sequence.resources.close()

    def close(self) -> None:
        """The call is over: every sequence still open ends with it."""
        for sequence_id in list(self._open):
            self.end(sequence_id)
