"""The WebSocket stream protocol, as JSON: the only module that knows both this wire and the pipeline's types.

A client sends, in order::

    {"config": {"model": "", "version": 0, "sample_rate_hz": 16000, "encoding": "PCM_S16LE",
                "emit_scores": false, "fast": false, "token": "..."}}  one text message: StreamConfig's fields
    <binary PCM>  <binary PCM>  ...                              audio, in the configured encoding
    {"end": true}                                                end of audio (WebSocket has no half-close)

and gets text messages with StreamResponse's fields, one response each::

    {"started": {"model", "version", "labels", "window_s", "hop_s"}}
    {"scores": {"start_s", "end_s", "scores", "gated"}}          every hop, when emit_scores is set
    {"event": {"label", "score", "time_s"}}
    {"error": {"code", "status", "message"}}                     then the server closes the connection

``token`` in the config is for clients that cannot set an ``Authorization`` header (browsers).
"""

from __future__ import annotations

import json
from typing import Any, Final

from hark.core.audio import PCM_F32LE, PCM_S16LE, check_sample_rate
from hark.core.model_store import LoadedModel
from hark.serving.errors import HTTP_STATUS, Refusal
from hark.serving.pipeline import StreamOptions
from hark.serving.session import Scored

ENCODINGS: Final[dict[str, str]] = {"PCM_S16LE": PCM_S16LE, "PCM_F32LE": PCM_F32LE}
CONFIG_FIELDS: Final = ("model", "version", "sample_rate_hz", "encoding", "emit_scores", "fast", "token")
# Close codes: 4000 + the HTTP status of the refusal (4400, 4401, 4404, 4408, 4429, 4500, 4503).
CLOSE_BASE: Final = 4000


def _invalid(message: str) -> Refusal:
    return Refusal("INVALID_ARGUMENT", message)


def parse_json(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise _invalid(f"the {what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise _invalid(f"the {what} must be a JSON object")
    return value


def token_of(message: str | bytes) -> str | None:
    """The token in a first message, if it has one; never raises (authentication comes before parsing)."""
    if isinstance(message, bytes):
        return None
    try:
        config = json.loads(message).get("config", {})
        token = config.get("token")
    except (ValueError, AttributeError):
        return None
    return token if isinstance(token, str) else None


def parse_config(message: str | bytes) -> StreamOptions:
    """The stream's options from the first message."""
    if isinstance(message, bytes):
        raise _invalid('send the config first: a text message {"config": {...}}, then binary audio')
    body = parse_json(message, "first message")
    if set(body) != {"config"} or not isinstance(body["config"], dict):
        raise _invalid('the first message must be {"config": {...}} with StreamConfig\'s fields')
    config: dict[str, Any] = body["config"]
    unknown = sorted(set(config) - set(CONFIG_FIELDS))
    if unknown:
        raise _invalid(f"unknown config field(s) {', '.join(unknown)}; the fields are {', '.join(CONFIG_FIELDS)}")
    model, version, rate = config.get("model", ""), config.get("version", 0), config.get("sample_rate_hz", 0)
    encoding, emit, token = config.get("encoding", "PCM_S16LE"), config.get("emit_scores", False), config.get("token")
    if not isinstance(model, str):
        raise _invalid("config.model must be a string")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise _invalid("config.version must be a whole number >= 0 (0 = the newest)")
    if isinstance(rate, bool) or not isinstance(rate, int):
        raise _invalid("config.sample_rate_hz must be a whole number")
    check_sample_rate(rate)
    if encoding not in ENCODINGS:
        raise _invalid(f"encoding {encoding!r} is not supported; set encoding to PCM_S16LE or PCM_F32LE")
    if not isinstance(emit, bool):
        raise _invalid("config.emit_scores must be true or false")
    if token is not None and not isinstance(token, str):
        raise _invalid("config.token must be a string")
    fast = config.get("fast", False)
    if not isinstance(fast, bool):
        raise _invalid("config.fast must be true or false")
    return StreamOptions(
        model=model,
        version=version,
        sample_rate_hz=rate,
        encoding=ENCODINGS[encoding],
        emit_scores=emit,
        fast=fast,
    )


def is_end(message: str) -> bool:
    """True for the end-of-audio message; anything else in text after the config is refused."""
    body = parse_json(message, "text message")
    if "config" in body:
        raise _invalid("a second config was sent; the config comes once, as the first message")
    if body != {"end": True}:
        raise _invalid('after the config, send binary audio frames and then {"end": true}')
    return True


def started(model: LoadedModel) -> str:
    m = model.manifest
    return json.dumps(
        {
            "started": {
                "model": m.name,
                "version": m.version,
                "labels": m.labels,
                "window_s": m.window_s,
                "hop_s": m.hop_s,
            }
        }
    )


def responses(scored: Scored, emit_scores: bool) -> list[str]:
    """One scored window as messages: its scores (when asked for), then its events."""
    out = []
    if emit_scores:
        w = scored.window
        scores = [float(s) for s in scored.scores.tolist()]
        out.append(json.dumps({"scores": {"start_s": w.start_s, "end_s": w.end_s, "scores": scores, "gated": w.gated}}))
    for e in scored.events:
        out.append(json.dumps({"event": {"label": e.label, "score": float(e.score), "time_s": e.time_s}}))
    return out


def error(refusal: Refusal) -> str:
    status = HTTP_STATUS[refusal.code]
    body: dict[str, Any] = {"code": refusal.code, "status": status, "message": refusal.message}
    if refusal.retry_after_ms is not None:
        body["retry_after_ms"] = refusal.retry_after_ms
    return json.dumps({"error": body})


def close_code(refusal: Refusal) -> int:
    return CLOSE_BASE + HTTP_STATUS[refusal.code]
