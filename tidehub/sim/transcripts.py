"""Whisper-shaped transcripts: deterministic English sentences spread over the audio's duration."""

from __future__ import annotations

import random
from typing import Any

_SUBJECTS = ("the team", "our guide", "the old harbour", "a small boat", "the weather", "my neighbour",
             "the new library", "this recipe", "the morning train", "the river", "each visitor", "the band")
_VERBS = ("carried", "described", "welcomed", "followed", "changed", "remembered", "painted", "opened",
          "explained", "crossed", "collected", "watched")
_OBJECTS = ("the long road home", "a quiet evening", "every detail of the plan", "the last few pages",
            "a bright red door", "the tide at sunset", "two cups of tea", "the garden wall",
            "a map of the coast", "the first snow", "an unfinished song", "the whole town")
_TAILS = ("before noon", "without a word", "for the second time", "as the lights came on", "in the rain",
          "after a short break", "with great care", "near the station", "all afternoon", "once again")
_WORDS_PER_SECOND = 2.5


def make_transcript(seconds: float, seed: int, chunk_level: str, language: str | None) -> dict[str, Any]:
    """``{text, chunks, languages}`` covering ``seconds`` of speech, one chunk per sentence or word."""
    rng = random.Random(seed)
    sentences = _sentences(rng, max(1, round(seconds * _WORDS_PER_SECOND)))
    word_total = sum(len(s) for s in sentences)
    slot = seconds / word_total
    chunks: list[dict[str, Any]] = []
    clock = 0.0
    for words in sentences:
        start = clock
        for word in words:
            if chunk_level == "word":
                chunks.append({"timestamp": [round(clock, 2), round(clock + slot * 0.9, 2)], "text": f" {word}"})
            clock += slot
        if chunk_level != "word":
            chunks.append({"timestamp": [round(start, 2), round(clock, 2)], "text": " " + " ".join(words)})
    return {
        "text": " ".join(" ".join(words) for words in sentences),
        "chunks": chunks,
        "languages": [language or "en"],
    }


def _sentences(rng: random.Random, word_budget: int) -> list[list[str]]:
    sentences: list[list[str]] = []
    used = 0
    while used < word_budget:
        parts = [rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS)]
        if rng.random() < 0.6:
            parts.append(rng.choice(_TAILS))
        words = " ".join(parts).split()
        words[0] = words[0].capitalize()
        words[-1] += "."
        sentences.append(words)
        used += len(words)
    return sentences
