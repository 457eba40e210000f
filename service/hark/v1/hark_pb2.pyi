from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AudioEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIO_ENCODING_UNSPECIFIED: _ClassVar[AudioEncoding]
    PCM_S16LE: _ClassVar[AudioEncoding]
    PCM_F32LE: _ClassVar[AudioEncoding]
AUDIO_ENCODING_UNSPECIFIED: AudioEncoding
PCM_S16LE: AudioEncoding
PCM_F32LE: AudioEncoding

class StreamConfig(_message.Message):
    __slots__ = ("model", "version", "sample_rate_hz", "encoding", "emit_scores", "channels", "class_thresholds", "sensitivity", "allowed_classes", "fast")
    class ClassThresholdsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    EMIT_SCORES_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    CLASS_THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    SENSITIVITY_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_CLASSES_FIELD_NUMBER: _ClassVar[int]
    FAST_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    sample_rate_hz: int
    encoding: AudioEncoding
    emit_scores: bool
    channels: int
    class_thresholds: _containers.ScalarMap[str, float]
    sensitivity: float
    allowed_classes: _containers.RepeatedScalarFieldContainer[str]
    fast: bool
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., sample_rate_hz: _Optional[int] = ..., encoding: _Optional[_Union[AudioEncoding, str]] = ..., emit_scores: _Optional[bool] = ..., channels: _Optional[int] = ..., class_thresholds: _Optional[_Mapping[str, float]] = ..., sensitivity: _Optional[float] = ..., allowed_classes: _Optional[_Iterable[str]] = ..., fast: _Optional[bool] = ...) -> None: ...

class AudioChunk(_message.Message):
    __slots__ = ("pcm",)
    PCM_FIELD_NUMBER: _ClassVar[int]
    pcm: bytes
    def __init__(self, pcm: _Optional[bytes] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("config", "audio")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    config: StreamConfig
    audio: AudioChunk
    def __init__(self, config: _Optional[_Union[StreamConfig, _Mapping]] = ..., audio: _Optional[_Union[AudioChunk, _Mapping]] = ...) -> None: ...

class StreamStarted(_message.Message):
    __slots__ = ("model", "version", "labels", "window_s", "hop_s")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    HOP_S_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    labels: _containers.RepeatedScalarFieldContainer[str]
    window_s: float
    hop_s: float
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., labels: _Optional[_Iterable[str]] = ..., window_s: _Optional[float] = ..., hop_s: _Optional[float] = ...) -> None: ...

class WindowScores(_message.Message):
    __slots__ = ("start_s", "end_s", "scores", "gated")
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    GATED_FIELD_NUMBER: _ClassVar[int]
    start_s: float
    end_s: float
    scores: _containers.RepeatedScalarFieldContainer[float]
    gated: bool
    def __init__(self, start_s: _Optional[float] = ..., end_s: _Optional[float] = ..., scores: _Optional[_Iterable[float]] = ..., gated: _Optional[bool] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("label", "score", "time_s", "kind", "onset_s")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ONSET: _ClassVar[Event.Kind]
        OFFSET: _ClassVar[Event.Kind]
    ONSET: Event.Kind
    OFFSET: Event.Kind
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TIME_S_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ONSET_S_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    time_s: float
    kind: Event.Kind
    onset_s: float
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ..., time_s: _Optional[float] = ..., kind: _Optional[_Union[Event.Kind, str]] = ..., onset_s: _Optional[float] = ...) -> None: ...

class StreamResponse(_message.Message):
    __slots__ = ("started", "scores", "event")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    started: StreamStarted
    scores: WindowScores
    event: Event
    def __init__(self, started: _Optional[_Union[StreamStarted, _Mapping]] = ..., scores: _Optional[_Union[WindowScores, _Mapping]] = ..., event: _Optional[_Union[Event, _Mapping]] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("model", "version", "sample_rate_hz", "encoding", "pcm", "channels")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    PCM_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    sample_rate_hz: int
    encoding: AudioEncoding
    pcm: bytes
    channels: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., sample_rate_hz: _Optional[int] = ..., encoding: _Optional[_Union[AudioEncoding, str]] = ..., pcm: _Optional[bytes] = ..., channels: _Optional[int] = ...) -> None: ...

class ClassScore(_message.Message):
    __slots__ = ("label", "score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("model", "version", "label", "score", "scores", "active")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    label: str
    score: float
    scores: _containers.RepeatedCompositeFieldContainer[ClassScore]
    active: _containers.RepeatedCompositeFieldContainer[ClassScore]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., label: _Optional[str] = ..., score: _Optional[float] = ..., scores: _Optional[_Iterable[_Union[ClassScore, _Mapping]]] = ..., active: _Optional[_Iterable[_Union[ClassScore, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("version", "sha256", "labels", "window_s", "hop_s", "sample_rate_hz", "test_accuracy", "created_at")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    HOP_S_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    TEST_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    version: int
    sha256: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    window_s: float
    hop_s: float
    sample_rate_hz: int
    test_accuracy: float
    created_at: str
    def __init__(self, version: _Optional[int] = ..., sha256: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., window_s: _Optional[float] = ..., hop_s: _Optional[float] = ..., sample_rate_hz: _Optional[int] = ..., test_accuracy: _Optional[float] = ..., created_at: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "default_version", "versions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    default_version: int
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    def __init__(self, name: _Optional[str] = ..., default_version: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ...) -> None: ...
