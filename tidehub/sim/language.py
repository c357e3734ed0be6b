"""What the simulated language models say and how they count: tokens, canned replies, embeddings.

Everything is deterministic (equal input, equal output) and cheap, because a relay benchmark sends
chat requests as fast as it can: a reply is a few template sentences that echo the question's words,
cached per question, and an embedding is a hash stretched into a unit vector.

The token rule, used for prompts and completions alike: a token is a run of letters and digits, one
CJK character, or one punctuation mark; whitespace is free. A completion is streamed as one piece per
token (the piece carries the whitespace before it), so ``completion_tokens`` equals the number of
content chunks of a stream.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
import re
import sys
import zlib
from array import array

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]")
_PIECE = re.compile(rf"\s*(?:[{_CJK}]|[^\W{_CJK}]+|[^\w\s])")
_WORD = re.compile(rf"[{_CJK}]+|[^\W_{_CJK}]+")
_CJK_START = re.compile(f"[{_CJK}]")
_MARKER = re.compile(r"\[sim:[^\]]*\]")

#: Tokens a chat message costs on top of its content (role and framing), and the reply's priming.
MESSAGE_OVERHEAD_TOKENS = 3
REPLY_PRIMING_TOKENS = 3

#: Words too common to be worth echoing back.
_STOPWORDS = frozenset(
    "a about an and are as at be but by can could describe do does explain for from give had has have hello hi how "
    "i if in into is it its list me my no not of on or our please show so some tell than that the their them then "
    "there these they this to us was we were what when where which who why will with would write you your".split()
)

_OPENING = "You asked about {topic}."
_SENTENCES = (
    "Here is a simulated answer from the Tidehub simulator.",
    "The key point about {a} is how it connects to {b}.",
    "{A} matters here, and so does {b}.",
    "In short, {topic} is worth a closer look.",
    "Consider {a} first, then {b}.",
    "A careful look at {a} usually settles the question.",
    "This reply is deterministic, so the same question always gets the same words.",
    "If {a} changes, expect {b} to change with it.",
)
_ENDING = "Let me know if you want more detail on {a}."


def count_tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


def pieces(text: str) -> list[str]:
    """``text`` cut into one piece per token; joining the pieces gives the text back (less trailing space)."""
    return _PIECE.findall(text)


@functools.lru_cache(maxsize=4096)
def reply(prompt: str, variant: int = 0) -> tuple[str, ...]:
    """The assistant's answer to ``prompt`` as token pieces; ``variant`` picks another wording (for ``n``)."""
    words: list[str] = []
    seen: set[str] = set()
    for word in _WORD.findall(_MARKER.sub(" ", prompt)):
        lowered = word.lower()
        if lowered in _STOPWORDS or (len(lowered) < 2 and not _is_cjk(lowered)):
            continue
        if lowered not in seen:
            seen.add(lowered)
            words.append(lowered)
        if len(words) == 8:
            break
    if not words:
        words = ["your", "message"]
    rng = random.Random(zlib.crc32(prompt.encode("utf-8", "replace")) ^ (variant * 0x9E3779B1))
    topic = " ".join(words[:4])
    a, b = rng.choice(words), rng.choice(words)
    chosen = rng.sample(_SENTENCES, k=rng.randint(2, 4))
    sentences = [_OPENING, *chosen, _ENDING]
    text = " ".join(s.format(topic=topic, a=a, b=b, A=a[:1].upper() + a[1:]) for s in sentences)
    return tuple(pieces(text))


def embedding(model: str, text: str, native_dims: int, dims: int) -> list[float]:
    """A unit vector of ``dims`` numbers for ``text``.

    Shortened vectors are the normalised prefix of the full one, as with OpenAI's v3 models, so a
    client that truncates and renormalises itself gets the same numbers.
    """
    full = _raw_vector(model, text, native_dims)
    prefix = full[:dims]
    norm = math.hypot(*prefix) or 1.0
    return [x / norm for x in prefix]


@functools.lru_cache(maxsize=1024)
def _raw_vector(model: str, text: str, dims: int) -> array:
    raw = array("h")
    raw.frombytes(hashlib.shake_256(f"{model}\0{text}".encode("utf-8", "replace")).digest(dims * 2))
    if sys.byteorder == "big":
        raw.byteswap()
    return raw


def _is_cjk(word: str) -> bool:
    return bool(_CJK_START.match(word))
