"""The versioned model store: layout, manifest, verification, loading and atomic publishing.

Layout: ``<root>/<model name>/<version:int>/{model.onnx, manifest.json}``. A version serves only after
it passes every check in :func:`load_version`; a version that fails is refused with a reason and the
versions already serving are untouched. Training publishes through :func:`publish_version`, which
writes into a hidden folder and renames it into place, so the server never sees half a version.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hark.core.frontend import FrontendConfig, LogMel
from hark.core.runner import ModelRunner, create_session
from hark.core.streaming import StateSpec, StreamingRunner
from hark.core.text import quote

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
CONTROL_DIR = "control"  # optional: labelled clips the server runs through its live path (hark.serving.control)
CONTROL_CSV = "control.csv"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


class InvalidModelName(ValueError):
    """A model name that could not be a folder of the store (path separators, dots, too long)."""


class ModelNotFound(LookupError):
    """No valid version serves under that name (and version)."""


class VerificationError(Exception):
    """A version folder that must not serve, and why."""


def validate_model_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidModelName(
            f"model name {quote(name)} is not valid: use 1-64 characters of a-z, 0-9, '_' and '-', "
            "starting with a letter or digit"
        )
    return name


class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    # Dimensions; a string names a dynamic one (the batch).
    shape: list[int | str]


class FeatureStats(BaseModel):
    """Per-band statistics of the training features: the reference for drift."""

    model_config = ConfigDict(extra="forbid")

    mean: list[float]
    std: list[float]
    n_frames: int = Field(ge=0)


class Manifest(BaseModel):
    """Everything the server needs to know about a version, and what produced it."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    name: str
    version: int = Field(ge=1)
    labels: list[str] = Field(min_length=2)
    # Classes that never raise events (silence, unknown words).
    background_labels: list[str] = Field(default_factory=lambda: ["_silence_", "_unknown_"])
    frontend: FrontendConfig
    window_frames: int = Field(ge=1)
    hop_frames: int = Field(ge=1)
    input: TensorSpec
    output: TensorSpec
    # logits: softmax over classes (one class at a time); probabilities: already normalised; sigmoid: one
    # independent detector per class (multi-label sound events, with onset and offset events).
    output_kind: Literal["logits", "probabilities", "sigmoid"] = "logits"
    # Per-class firing thresholds (chosen on validation at export); a class not named uses the server's.
    thresholds: dict[str, float] = Field(default_factory=dict)
    # The version's own event postprocessing, chosen on validation (None: the server's): hops averaged before
    # thresholding, and each class's release level as a share of its threshold (the server's
    # release_threshold / threshold otherwise). Short sounds want less smoothing than spoken words.
    smoothing_windows: int | None = Field(None, ge=1, le=50)
    release_ratio: float | None = Field(None, gt=0.0, le=1.0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)
    reference_stats: FeatureStats | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    # A windowed version takes whole windows; a streaming one takes each hop's new frames plus the stream's
    # state tensors (hark.core.streaming), and its input shape is [batch, hop_frames, n_mels].
    model_kind: Literal["windowed", "streaming"] = "windowed"
    states: list[StateSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        validate_model_name(self.name)
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        if unknown := set(self.background_labels) - set(self.labels):
            raise ValueError(f"background labels {sorted(unknown)} are not labels")
        if unknown := set(self.thresholds) - set(self.labels):
            raise ValueError(f"thresholds name {sorted(unknown)}, which are not labels")
        if bad := {k: v for k, v in self.thresholds.items() if not 0.0 < v <= 1.0}:
            raise ValueError(f"thresholds must be in (0, 1], got {bad}")
        if self.hop_frames > self.window_frames:
            raise ValueError("hop_frames exceeds window_frames")
        expected_in = [self.input_frames, self.frontend.n_mels]
        if len(self.input.shape) != 3 or self.input.shape[1:] != expected_in:
            raise ValueError(f"input shape {self.input.shape} is not [batch, {expected_in[0]}, {expected_in[1]}]")
        if len(self.output.shape) != 2 or self.output.shape[1] != len(self.labels):
            raise ValueError(f"output shape {self.output.shape} is not [batch, {len(self.labels)}]")
        return self._streaming_consistent()

    def _streaming_consistent(self) -> Manifest:
        if self.model_kind == "windowed" and self.states:
            raise ValueError("a windowed model has no state tensors; set model_kind to 'streaming'")
        if self.model_kind == "streaming" and not self.states:
            raise ValueError("a streaming model needs its state tensors in 'states'")
        names = [self.input.name, self.output.name] + [n for s in self.states for n in (s.input, s.output)]
        if len(set(names)) != len(names):
            raise ValueError("input, output and state tensor names must all differ")
        return self

    @property
    def input_frames(self) -> int:
        """Frames per model call: the window, or for a streaming model the hop."""
        return self.hop_frames if self.model_kind == "streaming" else self.window_frames

    @property
    def window_s(self) -> float:
        return self.frontend.n_samples(self.window_frames) / self.frontend.sample_rate

    @property
    def hop_s(self) -> float:
        return self.hop_frames * self.frontend.hop_length / self.frontend.sample_rate


@dataclass(frozen=True)
class LoadedModel:
    """A verified version, ready to serve. Streams keep a reference, so a reload never pulls it away."""

    manifest: Manifest
    path: Path
    runner: ModelRunner | StreamingRunner
    loaded_at: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_regular_file(path: Path, max_bytes: int | None = None) -> bytes:
    """The bytes of ``path``, which must be a regular file and not a symlink.

    Opened with ``O_NOFOLLOW`` and checked on the open descriptor, so a file swapped for a symlink after
    a check cannot redirect the read outside the store; the bytes read are the bytes verified and loaded.
    Raises ``FileNotFoundError`` when it is missing and :class:`VerificationError` for anything else.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise
    except OSError as e:  # ELOOP for a symlink
        raise VerificationError(f"{path} is not a regular file (symlinks are refused): {e.strerror}") from e
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise VerificationError(f"{path} is not a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise VerificationError(f"{path} is larger than {max_bytes} bytes")
        return f.read()


def read_manifest(version_dir: Path) -> Manifest:
    path = version_dir / MANIFEST_FILE
    try:
        return Manifest.model_validate_json(read_regular_file(path, MAX_MANIFEST_BYTES))
    except FileNotFoundError as e:
        raise VerificationError(f"{path} is missing") from e
    except ValidationError as e:
        raise VerificationError(f"{path} is not a valid manifest: {e}") from e


def load_version(version_dir: Path, *, intra_op_threads: int = 1, warmup_batch: int = 2) -> LoadedModel:
    """Verify one version folder and open it; raise :class:`VerificationError` saying why it cannot serve.

    Checks, in order: the folder name is the manifest's version and its parent the manifest's name; the
    model file is a regular file (not a symlink) inside the folder whose sha256 matches, and exactly
    those bytes are loaded, with no external data; the frontend is one this
    server reproduces; onnxruntime loads it; its input and output match the manifest; a warm-up batch of
    ``warmup_batch`` windows (at least two) gives finite scores of the right shape.

    The server warms up at its largest batch: onnxruntime's memory arena grows to the largest batch it has
    run and keeps that memory, so a version reaches its peak memory here, where it is loaded, instead of
    stepping up during serving whenever a new largest batch first arrives (and a model that cannot run the
    server's batches is refused here, not in a stream).
    """
    manifest = read_manifest(version_dir)
    if version_dir.name != str(manifest.version) or version_dir.parent.name != manifest.name:
        raise VerificationError(
            f"{version_dir} holds a manifest for {manifest.name}/{manifest.version}; the folder must match"
        )
    model_path = version_dir / MODEL_FILE
    try:
        model_bytes = read_regular_file(model_path)
    except FileNotFoundError as e:
        raise VerificationError(f"{model_path} is missing or not a regular file") from e
    sha = hashlib.sha256(model_bytes).hexdigest()
    if sha != manifest.sha256:
        raise VerificationError(f"{model_path} has sha256 {sha[:12]}..., the manifest says {manifest.sha256[:12]}...")
    try:
        LogMel(manifest.frontend).frames(np.zeros(manifest.frontend.win_length, dtype=np.float32))
    except Exception as e:  # a frontend this server cannot reproduce
        raise VerificationError(f"frontend {manifest.frontend} cannot be reproduced: {e}") from e
    try:
        session = create_session(model_bytes, intra_op_threads)  # the verified bytes; no external data
    except Exception as e:  # onnxruntime raises its own exception types for bad files
        raise VerificationError(f"onnxruntime cannot load {model_path}: {e}") from e
    _check_io(session, manifest)
    runner = make_runner(session, manifest)
    batch = max(2, warmup_batch)
    if isinstance(runner, StreamingRunner):
        warm = runner.warmup_rows(batch)
        expected = (batch, runner.output_size)
    else:
        warm = np.zeros((batch, manifest.window_frames, manifest.frontend.n_mels), dtype=np.float32)
        expected = (batch, len(manifest.labels))
    try:
        scores = runner.run(warm)
    except Exception as e:
        raise VerificationError(f"warm-up inference of {batch} windows failed: {e}") from e
    if scores.shape != expected or not np.all(np.isfinite(scores)):
        raise VerificationError(f"warm-up gave scores of shape {scores.shape}, expected {expected}")
    return LoadedModel(manifest=manifest, path=version_dir, runner=runner)


def make_runner(session: Any, manifest: Manifest) -> ModelRunner | StreamingRunner:
    """The runner for a version's kind: whole windows, or packed rows of frames and state."""
    logits = manifest.output_kind == "logits"
    if manifest.model_kind == "streaming":
        if manifest.output_kind == "sigmoid":
            raise ValueError("a streaming version with sigmoid (multi-label) output is not supported yet")
        return StreamingRunner(
            session,
            manifest.input.name,
            manifest.output.name,
            manifest.states,
            hop_frames=manifest.hop_frames,
            n_mels=manifest.frontend.n_mels,
            n_classes=len(manifest.labels),
            logits=logits,
        )
    return ModelRunner(session, manifest.input.name, manifest.output.name, kind=manifest.output_kind)


def _check_io(session: Any, manifest: Manifest) -> None:
    inputs = {i.name: i.shape for i in session.get_inputs()}
    outputs = {o.name: o.shape for o in session.get_outputs()}
    if manifest.input.name not in inputs:
        raise VerificationError(f"model has no input {manifest.input.name!r} (it has {sorted(inputs)})")
    if manifest.output.name not in outputs:
        raise VerificationError(f"model has no output {manifest.output.name!r} (it has {sorted(outputs)})")
    tensors: list[tuple[str, list[int | str], Any]] = [
        ("input", manifest.input.shape, inputs[manifest.input.name]),
        ("output", manifest.output.shape, outputs[manifest.output.name]),
    ]
    for spec in manifest.states:
        if spec.input not in inputs or spec.output not in outputs:
            raise VerificationError(f"model lacks the state input {spec.input!r} or output {spec.output!r}")
        state_shape: list[int | str] = ["batch", *spec.shape]
        tensors += [
            ("state input", state_shape, inputs[spec.input]),
            ("state output", state_shape, outputs[spec.output]),
        ]
    if extra := set(inputs) - {manifest.input.name} - {s.input for s in manifest.states}:
        raise VerificationError(f"model has inputs the manifest does not declare: {sorted(extra)}")
    for what, declared, actual in tensors:
        if len(actual) != len(declared) or any(
            isinstance(d, int) and isinstance(a, int) and a != d for d, a in zip(declared, actual, strict=True)
        ):
            raise VerificationError(f"model {what} shape {actual} does not match the manifest's {declared}")


def iter_version_dirs(root: Path) -> Iterator[Path]:
    """Candidate version folders: ``<root>/<valid name>/<digits>``, nothing hidden, nothing else."""
    if not root.is_dir():
        return
    for model_dir in sorted(root.iterdir()):
        if not model_dir.is_dir() or model_dir.is_symlink() or not NAME_PATTERN.fullmatch(model_dir.name):
            continue
        for version_dir in sorted(model_dir.iterdir(), key=lambda p: (len(p.name), p.name)):
            if version_dir.is_dir() and not version_dir.is_symlink() and version_dir.name.isdigit():
                yield version_dir


def _signature(version_dir: Path) -> tuple[float, ...]:
    """Changes whenever either file of the version is rewritten."""
    stats = []
    for name in (MODEL_FILE, MANIFEST_FILE):
        try:
            st = (version_dir / name).stat()
            stats += [st.st_mtime, float(st.st_size)]
        except OSError:
            stats += [-1.0, -1.0]
    return tuple(stats)


@dataclass
class RefreshReport:
    loaded: list[tuple[str, int]] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    removed: list[tuple[str, int]] = field(default_factory=list)


class ModelStore:
    """The versions that serve now, kept in step with the folder by :meth:`refresh`.

    ``refresh`` builds the new table aside and swaps it in one assignment; readers never lock.
    """

    def __init__(
        self, root: Path, *, default_model: str = "", intra_op_threads: int = 1, warmup_batch: int = 2
    ) -> None:
        self.root = Path(root)
        self.default_model = default_model
        self.intra_op_threads = intra_op_threads
        self.warmup_batch = warmup_batch
        self._models: dict[str, dict[int, LoadedModel]] = {}
        self._signatures: dict[Path, tuple[float, ...]] = {}
        self.refused: dict[Path, str] = {}
        self._refresh_lock = threading.Lock()

    def refresh(self) -> RefreshReport:
        """Load new or changed versions, drop vanished ones, refuse broken ones. Blocking."""
        with self._refresh_lock:
            report = RefreshReport()
            table: dict[str, dict[int, LoadedModel]] = {}
            seen: set[Path] = set()
            for version_dir in iter_version_dirs(self.root):
                seen.add(version_dir)
                signature = _signature(version_dir)
                name, version = version_dir.parent.name, int(version_dir.name)
                current = self._models.get(name, {}).get(version)
                if current is not None and self._signatures.get(version_dir) == signature:
                    table.setdefault(name, {})[version] = current
                    continue
                if version_dir in self.refused and self._signatures.get(version_dir) == signature:
                    continue  # already refused in this state; do not log it again
                self._signatures[version_dir] = signature
                try:
                    loaded = load_version(
                        version_dir, intra_op_threads=self.intra_op_threads, warmup_batch=self.warmup_batch
                    )
                except VerificationError as e:
                    self.refused[version_dir] = str(e)
                    report.refused[str(version_dir)] = str(e)
                    if current is not None:  # a serving version rewritten badly keeps serving as it was
                        table.setdefault(name, {})[version] = current
                    continue
                self.refused.pop(version_dir, None)
                table.setdefault(name, {})[version] = loaded
                report.loaded.append((name, version))
            for name, versions in self._models.items():
                for version in versions:
                    if version not in table.get(name, {}):
                        report.removed.append((name, version))
            for stale in set(self._signatures) - seen:
                self._signatures.pop(stale, None)
                self.refused.pop(stale, None)
            self._models = table
            return report

    def models(self) -> dict[str, dict[int, LoadedModel]]:
        """A snapshot: name -> version -> loaded model."""
        return self._models

    def default_name(self) -> str:
        if self.default_model:
            return self.default_model
        return min(self._models) if self._models else ""

    def resolve(self, name: str = "", version: int = 0) -> LoadedModel:
        """The version a request asks for: ``name`` empty means the default model, ``version`` 0 the newest."""
        models = self._models
        name = name or self.default_name()
        if name:
            validate_model_name(name)
        versions = models.get(name)
        if not versions:
            available = ", ".join(sorted(models)) or "none"
            raise ModelNotFound(f"model {quote(name)} is not served (available: {available})")
        if version == 0:
            return versions[max(versions)]
        if version not in versions:
            raise ModelNotFound(
                f"model {quote(name)} has no valid version {version} "
                f"(available: {', '.join(map(str, sorted(versions)))})"
            )
        return versions[version]


def next_version(root: Path, name: str) -> int:
    model_dir = Path(root) / validate_model_name(name)
    existing = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()] if model_dir.is_dir() else []
    return max(existing, default=0) + 1


def publish_version(
    root: Path,
    manifest_fields: dict[str, Any],
    onnx_file: Path,
    version: int | None = None,
    extra_files: Mapping[str, Path] | None = None,
    extra_dirs: Mapping[str, Path] | None = None,
) -> Path:
    """Write ``onnx_file`` and its manifest as a new version of ``manifest_fields['name']``, atomically.

    ``manifest_fields`` is every manifest field but ``version``, ``sha256``, ``size_bytes`` and
    ``created_at``, which are filled here. ``extra_files`` (file name -> source) are copied in beside them,
    such as evaluation reports, and ``extra_dirs`` (folder name -> source folder) likewise, such as the
    control set, so the version appears whole. Returns the new version folder.
    """
    name = validate_model_name(str(manifest_fields["name"]))
    model_dir = Path(root) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = version or next_version(root, name)
    final = model_dir / str(version)
    if final.exists():
        raise FileExistsError(f"{final} already exists; versions are immutable")
    manifest = Manifest.model_validate(
        {
            **manifest_fields,
            "version": version,
            "sha256": sha256_file(onnx_file),
            "size_bytes": onnx_file.stat().st_size,
            "created_at": datetime.now(UTC),
        }
    )
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=model_dir))
    try:
        shutil.copyfile(onnx_file, staging / MODEL_FILE)
        for file_name, source in (extra_files or {}).items():
            if Path(file_name).name != file_name or file_name in (MODEL_FILE, MANIFEST_FILE):
                raise ValueError(f"extra file name {file_name!r} must be a plain name other than the model's")
            shutil.copyfile(source, staging / file_name)
        for dir_name, source in (extra_dirs or {}).items():
            if Path(dir_name).name != dir_name or dir_name in (MODEL_FILE, MANIFEST_FILE):
                raise ValueError(f"extra folder name {dir_name!r} must be a plain name other than the model's")
            shutil.copytree(source, staging / dir_name, symlinks=False)
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
        os.chmod(staging, 0o755)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def publish_verified(
    root: Path,
    manifest_fields: dict[str, Any],
    onnx_file: Path,
    version: int | None = None,
    extra_files: Mapping[str, Path] | None = None,
    extra_dirs: Mapping[str, Path] | None = None,
) -> Path:
    """:func:`publish_version`, but only what the server would serve reaches ``root``.

    The version is first published into a scratch store and put through :func:`load_version` (the server's
    own checks), so a watching server never sees a version that fails them; once in ``root`` it is checked
    again and removed if that fails. Returns the new version folder.
    """
    with tempfile.TemporaryDirectory(prefix="hark-publish-") as tmp:
        scratch = publish_version(Path(tmp), manifest_fields, onnx_file, version, extra_files, extra_dirs)
        load_version(scratch)
    final = publish_version(root, manifest_fields, onnx_file, version, extra_files, extra_dirs)
    try:
        load_version(final)
    except Exception:
        shutil.rmtree(final, ignore_errors=True)
        raise
    return final


def update_metrics(version_dir: Path, updates: Mapping[str, Any]) -> Manifest:
    """Merge ``updates`` into a published version's ``metrics`` and rewrite its manifest atomically.

    Nothing else changes, so the version verifies exactly as before: the model's sha256 is checked first (a
    report is never attached to bytes other than those the manifest vouches for), the new manifest is
    validated before it is written, and it replaces the old one by a rename with the old file's mode, so a
    server reloading at that moment reads the old manifest or the new one, never half of either.
    """
    manifest = read_manifest(version_dir)
    model_path = version_dir / MODEL_FILE
    if sha256_file(model_path) != manifest.sha256:
        raise VerificationError(f"{model_path} does not match its manifest's sha256; not updating it")
    updated = Manifest.model_validate({**manifest.model_dump(), "metrics": {**manifest.metrics, **updates}})
    path = version_dir / MANIFEST_FILE
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST_FILE}-", dir=version_dir)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(updated.model_dump(mode="json"), indent=2) + "\n")
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return updated
