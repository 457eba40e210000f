"""Energy gating through the real server: quiet hops come back gated, and the answers do not change."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from loadtest.soak import config
from tests.fixtures_models import quiet, utterance
from tests.integration.conftest import StartHark
from tests.integration.test_server import OK, audio_requests, run_stream


async def test_quiet_hops_are_gated_and_events_are_unchanged(start_hark: StartHark, tiny_model_store: Path) -> None:
    audio = np.concatenate([utterance(), quiet(0.5)])
    requests = [config(emit_scores=True), *audio_requests(audio)]
    on = await run_stream((await start_hark(tiny_model_store)).stub, requests)
    off = await run_stream((await start_hark(tiny_model_store, gate_dbfs=float("-inf"))).stub, requests)
    assert on.code == off.code == OK
    assert [(e.label, e.time_s) for e in on.events] == [(e.label, e.time_s) for e in off.events] != []
    assert len(on.scores) == len(off.scores)
    gated = [s.gated for s in on.scores]
    assert any(gated) and not all(gated) and not any(s.gated for s in off.scores)
    silence = list(on.started.labels).index("_silence_")
    for a, b in zip(on.scores, off.scores, strict=True):
        assert (a.start_s, a.end_s) == (b.start_s, b.end_s)
        assert int(np.argmax(a.scores)) == int(np.argmax(b.scores))
        if a.gated:
            assert int(np.argmax(a.scores)) == silence
