"""English said with other languages' sounds (``espeak-ng-l2``): every English sound has a substitute in every
language, the substitutions are the ones its speakers make, and each language's voice says the keywords."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from hark_training import voices
from hark_training.data import KEYWORDS, UNKNOWN_WORDS, discover_voices
from hark_training.engines import ESPEAK_LICENCE, EngineError, EngineVoice, Prosody, installed_voices, speak
from hark_training.l2_english import L2_LANGUAGES, SUBSTITUTES, english_phonemes, l2_input, substitution_table
from hark_training.voices import FILLER_WORDS, VoicesConfig

pytestmark = pytest.mark.skipif(not shutil.which("espeak-ng"), reason="espeak-ng is not installed")

VOCABULARY = sorted({*KEYWORDS, *UNKNOWN_WORDS, *FILLER_WORDS})


def test_every_english_sound_of_the_vocabulary_has_a_substitute() -> None:
    """A sound missing from :data:`SUBSTITUTES` would reach the other language's voice unchanged, and be dropped
    by it wherever its phoneme table lacks it."""
    running = ["water about an hour ago", "sorry the story is happy", "thank you where are they"]
    pieces = english_phonemes([*VOCABULARY, *running])
    said = {token.lstrip("',%=") for words in pieces for word in words for token in word}
    assert {s for s in said if not s.startswith("_")} - set(SUBSTITUTES) == set()


@pytest.mark.parametrize("language", L2_LANGUAGES)
def test_each_language_replaces_every_english_sound_with_sounds_its_voice_has(language: str) -> None:
    table = substitution_table(language)
    assert set(table) == set(SUBSTITUTES)
    assert all(sound for phoneme, sounds in table.items() for sound in sounds if phoneme != "h")


@pytest.mark.parametrize(
    "language,english,substitute",
    [
        ("es", "v", ("b",)),  # "very" -> "bery"
        ("es", "h", ("x",)),  # the Spanish jota
        ("ko", "f", ("p",)),  # "left" -> "lept"
        ("ko", "r", ("l",)),  # "right" -> "light"
        ("ar", "p", ("b",)),  # "stop" -> "stob"
        ("it", "h", ()),  # "hello" -> "ello"
        ("fa", "w", ("v",)),  # "water" -> "vater"
        ("cmn", "T", ("s",)),  # "thank" -> "sank"
        ("tr", "D", ("d",)),  # "the" -> "de"
    ],
)
def test_the_substitutions_are_those_the_languages_speakers_make(
    language: str, english: str, substitute: tuple[str, ...]
) -> None:
    assert substitution_table(language)[english] == substitute


def test_the_text_keeps_its_words_stress_and_clause_punctuation() -> None:
    said = l2_input("yes, stop the music!", "es")
    assert said.startswith("[[") and said.endswith("]]!")
    first, second = said.split(", ")
    assert first.startswith("[[") and first.endswith("]]")
    assert len(second.removesuffix("]]!").removeprefix("[[").split()) == 3
    assert "'" in first  # English stress survives
    assert l2_input("  ", "es") == ""


def test_the_accent_russian_test_voices_have_is_never_trained_on() -> None:
    """RHVoice, the held-out test engine, has two Russian-accented voices: that accent stays unheard."""
    assert not {"ru", "uk", "be"} & set(L2_LANGUAGES)
    assert not any(file.startswith("zle/") for file in L2_LANGUAGES.values())


def test_every_language_says_the_keywords_and_sounds_unlike_the_others() -> None:
    found = installed_voices(("espeak-ng-l2",))
    assert {v.voice.split("+")[0] for v in found} == set(L2_LANGUAGES)
    assert all(v.licence == ESPEAK_LICENCE for v in found)
    said = {}
    for v in found:
        audio = speak(v, "left", Prosody())
        loud = np.flatnonzero(np.abs(audio) > 0.02)
        assert loud.size and 0.15 < (loud[-1] - loud[0]) / 16_000 < 1.0, v.name
        said[v.voice] = audio
    first = next(iter(said.values()))
    assert sum(a.size == first.size and np.allclose(a, first, atol=1e-3) for a in said.values()) == 1


def test_an_unknown_language_is_an_engine_error() -> None:
    with pytest.raises(EngineError, match="no language"):
        speak(EngineVoice("espeak-ng-l2", "xx+m3", ESPEAK_LICENCE), "yes")


def test_a_failed_espeak_ng_call_is_an_engine_error_that_says_why() -> None:
    with pytest.raises(EngineError, match=r"espeak-ng failed: .*does not exist"):
        english_phonemes(["yes"], accent="xx-no-such-accent")


def test_its_speakers_use_training_variants_only_and_speak_once_however_many_renders() -> None:
    """A held-out espeak-ng variant heard under another accent would leak a test voice into training."""
    training = {v.variant for v in discover_voices(0)["train"]}
    specs = voices.plan(VoicesConfig(words_per_engine=60, sentences_per_engine=10, renders=3), ["espeak-ng-l2"], 0)
    assert specs and {s.split for s in specs} == {"train"}
    assert {s.voice.voice.split("+", 1)[1] for s in specs} <= training
    assert {s.render for s in specs} == {0}
    assert len({s.voice.voice.split("+")[0] for s in specs}) == len(L2_LANGUAGES)
