"""English said as speakers of other languages say it: espeak-ng's English pronunciation, each sound replaced by the
nearest one another language's voice has, spoken by that voice.

This is how a second-language (L2) accent forms: the words and their stress are English, but every sound is drawn
from the speaker's first language (``the`` becomes ``de`` in Italian, ``ze`` in Persian, ``water`` ``voter`` in
Persian and Turkish), with that language's vowels, its ``r`` and its intonation. espeak-ng's formant voices speak
it, so the accents are many and cheap.

Russian, Ukrainian and Belarusian are left out while RHVoice, whose two non-native voices have a Russian accent,
is the held-out test engine: that accent stays one the model never heard.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache, partial

from hark_training.engines import EngineError, run_program

L2_LANGUAGES: dict[str, str] = {
    "es": "roa/es",
    "it": "roa/it",
    "pt-br": "roa/pt-BR",
    "hi": "inc/hi",
    "tr": "trk/tr",
    "cmn": "sit/cmn",
    "vi": "aav/vi",
    "ar": "sem/ar",
    "ko": "ko",
    "fa": "ira/fa",
    "id": "poz/id",
    "sw": "bnt/sw",
}
"""First language -> espeak-ng's voice file for it (``lang/<file>``). Languages MBROLA already speaks English with
in training (German, French, Dutch, Polish, ...) and Japanese (Kokoro) are not repeated; East Slavic is held out."""

SUBSTITUTES: dict[str, tuple[str, ...]] = {
    # consonants
    "p": ("p",),
    "b": ("b", "p"),
    "t": ("t",),
    "t#": ("t", "d"),
    "t2": ("t",),
    "d": ("d", "t"),
    "k": ("k",),
    "g": ("g", "k"),
    "f": ("f", "p"),
    "v": ("v", "w", "b", "f"),
    "T": ("T", "s", "t", "f"),
    "D": ("D", "z", "d"),
    "s": ("s",),
    "z": ("z", "s"),
    "S": ("S", "s"),
    "Z": ("Z", "S", "z", "dZ"),
    "h": ("h", "x", ""),
    "m": ("m",),
    "n": ("n",),
    "N": ("N", "n g", "n"),
    "l": ("l",),
    "r": ("r", "R", "*"),
    "j": ("j", "i"),
    "w": ("w", "v", "u"),
    "tS": ("tS", "t S", "ts", "S"),
    "dZ": ("dZ", "d Z", "Z", "j", "dz"),
    # vowels
    "E": ("E", "e"),
    "e@": ("e@", "E r", "e r", "E"),
    "I": ("I", "i"),
    "I2": ("I", "i"),
    "I#": ("I", "i"),
    "i": ("i",),
    "i:": ("i:", "i"),
    "i@": ("i@", "i @", "i e", "i"),
    "i@3": ("i@", "i @", "i e", "i"),
    "a": ("a", "E", "e"),
    "aa": ("aa", "a:", "a"),
    "a#": ("a#", "a", "@"),
    "A:": ("A:", "a:", "a"),
    "A@": ("A@", "a: r", "a r", "a"),
    "0": ("0", "O", "o", "a"),
    "O": ("O", "o"),
    "O:": ("O:", "O", "o"),
    "O2": ("O", "o"),
    "O@": ("O@", "O r", "o r", "o"),
    "o@": ("o@", "O r", "o r", "o"),
    "oU": ("oU", "o u", "o"),
    "u:": ("u:", "u"),
    "U": ("U", "u"),
    "U@": ("U@", "u @", "u e", "u"),
    "V": ("V", "a", "@"),
    "@": ("@", "e", "a"),
    "@2": ("@", "e", "a"),
    "@5": ("@", "e", "u"),
    "3": ("3", "@ r", "e r", "a"),
    "3:": ("3:", "@ r", "E r", "e r"),
    "@L": ("@L", "@ l", "e l", "l"),
    "aI": ("aI", "a j", "a i"),
    "aI@": ("aI @", "a j @", "a j e", "a i"),
    "aU": ("aU", "a w", "a u"),
    "eI": ("eI", "e j", "e i", "e"),
    "OI": ("OI", "o j", "o i"),
    # marks: the linking r of "water about" (the vowel before it already has its r), and the one espeak-ng puts
    # after a final unstressed "y" ("sorry")
    "r-": ("",),
    ";": ("",),
}
"""Each English phoneme (espeak-ng's names), with the sounds a speaker reaches for in order: itself where the
language has it (spoken the language's way), else the nearest sounds it has."""

ACCENT_RULES: dict[str, dict[str, str]] = {
    "es": {
        "v": "b", "z": "s", "Z": "j", "S": "tS", "dZ": "j", "h": "x", "N": "n",
        "I": "i", "i:": "i", "U": "u", "u:": "u", "V": "a", "a": "a", "aa": "a", "A:": "a", "0": "o", "O:": "o",
        "E": "e", "@": "e", "3": "e r", "3:": "e r", "@L": "e l", "oU": "o u",
    },
    "it": {
        "T": "t", "D": "d", "h": "", "Z": "dZ", "N": "n g",
        "I": "i", "i:": "i", "U": "u", "u:": "u", "V": "a", "a": "E", "aa": "a", "A:": "a", "0": "O", "O:": "O",
        "@": "e", "3": "e r", "3:": "e r", "@L": "o l", "oU": "o", "eI": "e i",
    },
    "pt-br": {
        "T": "t", "D": "d", "h": "x",
        "I": "i", "i:": "i", "U": "u", "u:": "u", "V": "a", "a": "E", "0": "O", "@": "e", "3": "e r", "3:": "E r",
        "oU": "o u",
    },
    "hi": {
        "T": "t", "D": "d", "w": "v", "z": "dZ", "Z": "dZ",
        "a": "E", "0": "A:", "3": "@ r", "3:": "@ r", "eI": "e:", "oU": "o:",
    },
    "tr": {
        "T": "t", "D": "d", "w": "v", "N": "n g",
        "I": "i", "V": "a", "a": "E", "0": "o", "O:": "o", "@": "e", "3": "e r", "3:": "E r", "oU": "o", "eI": "e j",
    },
    "cmn": {
        "T": "s", "D": "d", "v": "w", "z": "s", "dZ": "tS", "h": "x",
        "I": "i", "U": "u", "V": "a", "a": "E", "0": "o", "O:": "o", "3": "@ r", "3:": "@ r", "eI": "e j",
        "oU": "o u",
    },
    "vi": {
        "T": "t", "D": "d", "S": "s", "Z": "z", "dZ": "z",
        "I": "i", "U": "u", "V": "@", "a": "E", "0": "o", "3": "@", "3:": "@",
    },
    "ar": {
        "p": "b", "v": "f", "tS": "S", "N": "n g",
        "I": "i", "U": "u", "V": "a", "0": "o", "O:": "o", "oU": "o", "eI": "e", "@": "a", "3": "e r", "3:": "e r",
    },
    "ko": {
        "f": "p", "v": "b", "z": "dZ", "Z": "dZ", "T": "s", "D": "d", "r": "l",
        "I": "i", "U": "u", "V": "@", "a": "E", "E": "e", "0": "o", "O:": "o", "3": "@", "3:": "@", "oU": "o",
        "eI": "e",
    },
    "fa": {
        "T": "s", "D": "z", "w": "v", "N": "n g",
        "I": "i", "U": "u", "V": "a", "E": "e", "0": "o", "O:": "o", "@": "e", "3": "e r", "3:": "@ r", "eI": "e j",
        "oU": "o u",
    },
    "id": {
        "f": "p", "v": "f", "z": "s", "Z": "s", "S": "s", "T": "t", "D": "d",
        "I": "i", "U": "u", "V": "a", "a": "E", "0": "o", "O:": "o", "3": "@ r", "3:": "@ r", "oU": "o", "eI": "e",
    },
    "sw": {
        "Z": "z", "N": "n g",
        "I": "i", "U": "u", "V": "a", "E": "e", "0": "o", "O:": "o", "@": "a", "3": "a", "3:": "a", "eI": "e",
        "oU": "o",
    },
}  # fmt: skip
"""The English sounds each first language lacks, and what its speakers say instead (the usual substitutions of
contrastive phonology: Spanish ``v`` -> ``b``, Italian drops ``h``, Korean ``f`` -> ``p``, Arabic ``p`` -> ``b``, and
the tense and lax vowels merged). A voice's phoneme table also inherits sounds its language never uses, so "the
table has it" cannot tell these apart by itself."""

VARIANT_OF: dict[str, str] = {"t#": "t", "t2": "t", "I2": "I", "I#": "I", "i@3": "i@", "@2": "@", "@5": "@", "O2": "O:"}
"""espeak-ng's positional variants of an English phoneme (the flapped ``t``, unstressed vowels): a language's rule
for the phoneme is its rule for them too."""

STRESS = "',%="
_CLAUSE = re.compile(r"([^,.!?;:]+)([,.!?;:]*)")
_TONE = re.compile(r"\d+$")


def _espeak(args: list[str], text: str) -> str:
    return run_program(["espeak-ng", "-q", *args], stdin=text.encode()).decode()


def english_phonemes(pieces: Sequence[str], accent: str = "gmw/en-US") -> list[list[list[str]]]:
    """Each piece of text as espeak-ng's English pronunciation: words of phoneme tokens, stress marks attached."""
    out = _espeak(["-x", "--sep=|", "-v", accent, "--stdin"], "".join(f"{p}.\n" for p in pieces))
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    if len(lines) != len(pieces):
        raise EngineError(f"espeak-ng gave {len(lines)} phoneme lines for {len(pieces)} pieces of text")
    return [[word.split("|") for word in line.split()] for line in lines]


def _tokens(out: str) -> list[str]:
    return [t.lstrip(STRESS) for line in out.split() for t in line.split("|") if t.lstrip(STRESS) not in ("", "_")]


def _same(said: list[str], wanted: list[str]) -> bool:
    """The voice kept exactly the wanted sounds (tone languages add a tone number, which is theirs to add)."""
    return len(said) == len(wanted) and all(s == w or _TONE.sub("", s) == w for s, w in zip(said, wanted, strict=True))


def _voice_has(voice: str, sounds: str) -> bool:
    """Whether ``voice`` says ``sounds`` (space-separated phonemes) back as they are."""
    said = _espeak(["-x", "--sep=|", "-v", voice], f"[[{sounds.replace(' ', '')}]]")
    return _same(_tokens(said), sounds.split())


@cache
def substitution_table(language: str) -> dict[str, tuple[str, ...]]:
    """English phoneme -> the sounds ``language``'s voice uses for it: its accent rule, else the first substitute,
    that its phoneme table has, found by asking espeak-ng to say each one back (a sound it lacks is dropped)."""
    rules = ACCENT_RULES.get(language, {})
    has = cache(partial(_voice_has, L2_LANGUAGES[language]))
    table: dict[str, tuple[str, ...]] = {}
    for phoneme, subs in SUBSTITUTES.items():
        rule = rules.get(phoneme, rules.get(VARIANT_OF.get(phoneme, "")))
        wanted = subs if rule is None else (rule, *subs)
        table[phoneme] = tuple(next((s for s in wanted if s == "" or has(s)), subs[-1]).split())
    return table


def _respell(word: list[str], table: dict[str, tuple[str, ...]]) -> str:
    sounds: list[str] = []
    for token in word:
        if token.startswith("_"):  # a pause, the same in every language
            sounds.append(token)
            continue
        stress = token[: len(token) - len(token.lstrip(STRESS))]
        phoneme = token[len(stress) :]
        replaced = table.get(phoneme, (phoneme,))
        if replaced:
            sounds.append(stress + replaced[0])
            sounds += replaced[1:]
    return "".join(sounds)


def l2_input(text: str, language: str) -> str:
    """``text`` as espeak-ng phoneme input (``[[...]]``) for ``language``'s voice, clause by clause so each keeps
    its punctuation, and with it its intonation."""
    clauses = [(m.group(1).strip(), m.group(2)[:1]) for m in _CLAUSE.finditer(text) if m.group(1).strip()]
    if not clauses:
        return ""
    table = substitution_table(language)
    said = english_phonemes([c for c, _ in clauses])
    parts = []
    for (_, mark), words in zip(clauses, said, strict=True):
        parts.append("[[" + " ".join(_respell(w, table) for w in words) + "]]" + mark)
    return " ".join(parts)
