"""Checks of the `price:` rules in tidehub/catalog/data/*.yaml.

Each endpoint carries a declarative price rule (no code, no eval). The evaluator below is the reference
semantics the gateway implements; the hard-coded prices at the end pin it.

    total = ceil(credits x quantity x product of factors), at least `minimum` (default 1)

* quantity: 1 without a `quantity`; else the number in input field `quantity.field` (the schema default when
  absent; "8s", "8" and 8 all read as 8) times `scale`. When the field gives no number (absent with no schema
  default, or "auto") or gives 0 (WAN edit-video's "keep the input length"), `quantity.default` stands in for
  the field's value: it is in the field's units and is scaled too (music: 30000 ms x 0.001 = 30 s).
* `measured`: the real quantity is only known from the result (transcription minutes). `estimate` units are
  held at submit; the charge is the measured amount, never more than the hold.
* factors: the factor of the input field's value (schema default when absent); booleans as "true"/"false".
"""
from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import pytest
import yaml

DATA_DIR = Path(__file__).resolve().parents[1] / "tidehub" / "catalog" / "data"

UNITS = {"image", "second", "minute", "request", "1k_tokens"}
UNIT_BY_CAPABILITY = {"image": "image", "video": "second", "audio": "second", "transcribe": "minute",
                      "chat": "1k_tokens", "embeddings": "1k_tokens"}
PRICE_KEYS = {"unit", "credits", "quantity", "factors", "minimum", "output_credits", "max_output"}
QUANTITY_KEYS = {"field", "scale", "default", "measured", "estimate"}


def _load_endpoints():
    endpoints = []
    for path in sorted(DATA_DIR.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        endpoints.extend((path.name, ep) for ep in doc.get("endpoints") or [])
    return endpoints


ENDPOINTS = _load_endpoints()
BY_SLUG = {ep["slug"]: ep for _, ep in ENDPOINTS}
IDS = [f"{name}:{ep['slug']}" for name, ep in ENDPOINTS]


# ---------------------------------------------------------------------------------------------
# reference evaluator


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_number(value):
    """8, 8.0, "8", "8s" -> 8.0; anything else ("auto", None, True) -> None."""
    if _is_number(value):
        return float(value)
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*s?\s*", value)
        if match:
            return float(match.group(1))
    return None


def _factor_key(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _value(ep, inp: dict, field: str):
    if field in inp:
        return inp[field]
    return ep["input_schema"]["properties"].get(field, {}).get("default")


def _quantity(ep, inp: dict, measured: float | None = None) -> float:
    spec = ep["price"].get("quantity")
    if not spec:
        return 1.0
    if "measured" in spec:
        return float(spec["estimate"]) if measured is None else min(float(measured), float(spec["estimate"]))
    number = _as_number(_value(ep, inp, spec["field"]))
    if number is None or (number == 0 and "default" in spec):
        number = _as_number(spec.get("default"))
    if number is None:
        raise ValueError(f"{ep['slug']}: no quantity for {spec['field']}={_value(ep, inp, spec['field'])!r}")
    return number * float(spec.get("scale", 1))


def token_price(ep, input_tokens: int, output_tokens: int) -> int:
    """Token rules: credits per 1,000 input tokens plus ``output_credits`` per 1,000 output tokens."""
    rule = ep["price"]
    total = (input_tokens * float(rule["credits"]) + output_tokens * float(rule.get("output_credits", 0))) / 1000
    return max(math.ceil(round(total, 6)), int(rule.get("minimum", 1)))


def price_of(ep, inp: dict, measured: float | None = None) -> int:
    """Credits for input ``inp``; with ``measured`` the charge after the result (else the submit-time hold)."""
    rule = ep["price"]
    if rule["unit"] == "1k_tokens":
        # The hold: the prompt counted generously (2 characters a token, >= 16) plus the most output allowed.
        prompt = max(16, len(str(inp)) // 2)
        output = inp.get("max_completion_tokens") or inp.get("max_tokens") or rule.get("max_output", 4096)
        return token_price(ep, prompt, output if rule.get("output_credits") else 0)
    total = float(rule["credits"]) * _quantity(ep, inp, measured)
    for field, table in (rule.get("factors") or {}).items():
        total *= float(table[_factor_key(_value(ep, inp, field))])
    # Round off binary noise (e.g. 45 * 0.6) before rounding up, so 108.00000000000001 is 108.
    total = math.ceil(round(total, 6))
    return max(total, int(rule.get("minimum", 1)))


# ---------------------------------------------------------------------------------------------
# shape of the rules


@pytest.mark.parametrize("name,ep", ENDPOINTS, ids=IDS)
def test_price_shape(name, ep):
    rule = ep.get("price")
    assert isinstance(rule, dict), "every endpoint needs a price rule"
    assert set(rule) <= PRICE_KEYS, set(rule) - PRICE_KEYS
    token_keys = {"output_credits", "max_output"} & set(rule)
    assert not token_keys or rule["unit"] == "1k_tokens", token_keys
    if rule["unit"] == "1k_tokens":
        assert not {"quantity", "factors"} & set(rule), "token prices are measured from usage"
        assert ("output_credits" in rule) == (ep["capability"] == "chat")
    assert rule["unit"] in UNITS
    assert rule["unit"] == UNIT_BY_CAPABILITY[ep["capability"]]
    assert _is_number(rule["credits"]) and rule["credits"] > 0
    if "minimum" in rule:
        assert isinstance(rule["minimum"], int) and not isinstance(rule["minimum"], bool)
        assert rule["minimum"] >= 1


@pytest.mark.parametrize("name,ep", ENDPOINTS, ids=IDS)
def test_price_quantity(name, ep):
    spec = ep["price"].get("quantity")
    if spec is None:
        return
    assert isinstance(spec, dict) and spec
    assert set(spec) <= QUANTITY_KEYS, set(spec) - QUANTITY_KEYS
    props = ep["input_schema"]["properties"]
    if "measured" in spec:
        assert isinstance(spec["measured"], str) and spec["measured"]
        assert _is_number(spec.get("estimate")) and spec["estimate"] > 0, "measured needs an estimate to hold"
        assert "field" not in spec and "scale" not in spec
        return
    assert "estimate" not in spec, "estimate only goes with measured"
    field = spec.get("field")
    assert field in props, f"quantity field {field!r} is not in the input schema"
    if "scale" in spec:
        assert _is_number(spec["scale"]) and spec["scale"] > 0
    if "default" in spec:
        assert _is_number(spec["default"]) and spec["default"] > 0
    else:
        # Without a rule default the field must always yield a number: absent -> schema default.
        assert (_as_number(props[field].get("default")) or 0) > 0, f"{field}: absent field has no quantity"
    for value in props[field].get("enum", []):
        number = _as_number(value)
        assert (number is not None and number > 0) or "default" in spec, f"{field}={value!r} has no quantity"


@pytest.mark.parametrize("name,ep", ENDPOINTS, ids=IDS)
def test_price_factors(name, ep):
    factors = ep["price"].get("factors")
    if factors is None:
        return
    assert isinstance(factors, dict) and factors
    props = ep["input_schema"]["properties"]
    for field, table in factors.items():
        assert field in props, f"factor field {field!r} is not in the input schema"
        schema = props[field]
        assert isinstance(table, dict) and table
        assert all(isinstance(k, str) for k in table), f"{field}: keys must be strings (quote true/false)"
        assert all(_is_number(v) and v > 0 for v in table.values()), table
        if "enum" in schema:
            assert set(table) == {_factor_key(v) for v in schema["enum"]}, field
        elif schema.get("type") == "boolean":
            assert set(table) == {"true", "false"}, field
        else:
            pytest.fail(f"factor field {field!r} is neither an enum nor a boolean")
        assert "default" in schema, f"factor field {field!r} needs a schema default (absent field)"
        assert _factor_key(schema["default"]) in table


@pytest.mark.parametrize("name,ep", ENDPOINTS, ids=IDS)
def test_transcription_is_measured(name, ep):
    spec = ep["price"].get("quantity") or {}
    assert ("measured" in spec) == (ep["capability"] == "transcribe")


# ---------------------------------------------------------------------------------------------
# every input has a price


@pytest.mark.parametrize("name,ep", ENDPOINTS, ids=IDS)
def test_example_prices_are_positive_integers(name, ep):
    assert ep["examples"]
    for example in ep["examples"]:
        price = price_of(ep, example)
        assert isinstance(price, int) and price > 0, (example, price)


@pytest.mark.parametrize("name,ep", ENDPOINTS, ids=IDS)
def test_every_enum_combination_has_a_price(name, ep):
    """All values of the priced enum / boolean fields, combined, plus the all-defaults input."""
    rule = ep["price"]
    props = ep["input_schema"]["properties"]
    fields = list(rule.get("factors") or {})
    field = (rule.get("quantity") or {}).get("field")
    if field and field not in fields and ("enum" in props[field] or props[field].get("type") == "boolean"):
        fields.append(field)
    choices = [props[f]["enum"] if "enum" in props[f] else [True, False] for f in fields]
    assert price_of(ep, {}) > 0
    for combo in itertools.product(*choices):
        price = price_of(ep, dict(zip(fields, combo)))
        assert isinstance(price, int) and price > 0, (combo, price)


# ---------------------------------------------------------------------------------------------
# hand-derived prices that pin the semantics


@pytest.mark.parametrize("slug,inp,expected", [
    # images: credits per image x num_images x resolution/quality factor
    ("google/nano-banana/text-to-image", {"prompt": "x"}, 35),
    ("google/nano-banana/text-to-image", {"prompt": "x", "num_images": 2}, 70),
    ("google/nano-banana/edit", {"prompt": "x", "image_urls": ["u"], "num_images": 4}, 140),
    ("google/nano-banana-2/text-to-image", {"prompt": "x"}, 72),                                   # 1K default
    ("google/nano-banana-2/text-to-image", {"prompt": "x", "resolution": "0.5K"}, 54),             # 72 x 0.75
    ("google/nano-banana-2/edit", {"prompt": "x", "image_urls": ["u"], "resolution": "4K", "num_images": 3}, 432),
    ("google/nano-banana-pro/text-to-image", {"prompt": "x", "resolution": "2K"}, 135),
    ("google/nano-banana-pro/edit", {"prompt": "x", "image_urls": ["u"], "resolution": "4K", "num_images": 2}, 540),
    ("openai/gpt-image-2/text-to-image", {"prompt": "x"}, 190),                                    # high default
    ("openai/gpt-image-2/text-to-image", {"prompt": "x", "quality": "medium"}, 48),                # ceil(47.5)
    ("openai/gpt-image-2/text-to-image", {"prompt": "x", "quality": "low", "num_images": 2}, 10),   # 2 x 4.75
    ("openai/gpt-image-2/edit", {"prompt": "x", "image_urls": ["u"], "quality": "low"}, 5),        # ceil(4.75)
    # video: credits per second x duration x factors
    ("google/veo-3.1/text-to-video",
     {"prompt": "x", "duration": "8s", "resolution": "1080p", "generate_audio": True}, 2880),      # 180 x 8 x 2
    ("google/veo-3.1/text-to-video", {"prompt": "x"}, 2880),                                       # 8s 720p audio
    ("google/veo-3.1/text-to-video",
     {"prompt": "x", "duration": "4s", "resolution": "4k", "generate_audio": False}, 1080),        # 180 x 4 x 1.5
    ("google/veo-3.1/fast/text-to-video",
     {"prompt": "x", "duration": "8s", "resolution": "720p", "generate_audio": True}, 1080),       # 90 x 8 x 1.5
    ("google/veo-3.1/fast/text-to-video",
     {"prompt": "x", "duration": "6s", "resolution": "4k", "generate_audio": True}, 1823),         # ceil(1822.5)
    ("google/veo-3.1/lite/text-to-video",
     {"prompt": "x", "duration": "4s", "generate_audio": False}, 108),                             # 45 x 4 x 0.6
    ("google/veo-3.1/lite/text-to-video", {"prompt": "x", "resolution": "1080p"}, 576),            # 45 x 8 x 1.6
    ("google/veo-3/text-to-video", {"prompt": "x", "duration": "6s", "generate_audio": False}, 1080),
    ("kuaishou/kling-v3/pro/text-to-video", {"prompt": "x", "duration": "6"}, 908),                # ceil(907.2)
    ("kuaishou/kling-v3/pro/text-to-video", {"prompt": "x", "duration": "3", "generate_audio": False}, 303),
    ("kuaishou/kling-v3/standard/image-to-video", {"start_image_url": "u"}, 567),                  # 75.6 x 5 x 1.5
    ("alibaba/wan-2.7/text-to-video", {"prompt": "x", "duration": 2, "resolution": "720p"}, 180),
    ("alibaba/wan-2.7/text-to-video", {"prompt": "x"}, 675),                                       # 5 s 1080p
    ("alibaba/wan-2.7/edit-video", {"video_url": "u", "duration": 0}, 675),                        # 0 -> 5 s
    ("alibaba/wan-2.7/edit-video", {"video_url": "u"}, 675),                                       # default 0 -> 5 s
    ("alibaba/wan-2.7/edit-video", {"video_url": "u", "duration": 10, "resolution": "720p"}, 900),
    ("bytedance/seedance-2.0/text-to-video", {"prompt": "x"}, 1365),                               # auto -> 5 s
    ("bytedance/seedance-2.0/text-to-video", {"prompt": "x", "duration": "4", "resolution": "480p"}, 481),
    ("bytedance/seedance-2.0/text-to-video", {"prompt": "x", "duration": "10", "resolution": "1080p"}, 6143),
    ("bytedance/seedance-2.0/fast/text-to-video",
     {"prompt": "x", "duration": "auto", "generate_audio": False}, 1089),                          # ceil(1088.5)
    # music: seconds = music_length_ms x 0.001; absent -> default 30000 ms, scaled like the field -> 30 s
    ("elevenlabs/elevenlabs-music/music-generate", {"prompt": "x", "music_length_ms": 30000}, 360),
    ("elevenlabs/elevenlabs-music/music-generate", {"prompt": "x", "music_length_ms": 5000}, 60),
    ("elevenlabs/elevenlabs-music/music-generate", {"prompt": "x"}, 360),
    ("elevenlabs/elevenlabs-music/music-generate", {"prompt": "x", "music_length_ms": 3500}, 42),
    # transcription: the hold at submit is 10 minutes' worth
    ("openai/whisper-v3/transcribe", {"audio_url": "u"}, 54),
    ("fal/wizper/transcribe", {"audio_url": "u"}, 54),
])
def test_pinned_prices(slug, inp, expected):
    assert price_of(BY_SLUG[slug], inp) == expected


@pytest.mark.parametrize("slug,minutes,expected", [
    ("openai/whisper-v3/transcribe", 3, 17),      # ceil(16.2)
    ("openai/whisper-v3/transcribe", 0.1, 1),     # ceil(0.54)
    ("fal/wizper/transcribe", 0, 1),              # minimum 1
    ("fal/wizper/transcribe", 10, 54),
    ("fal/wizper/transcribe", 45, 54),            # never more than the hold
])
def test_measured_charge(slug, minutes, expected):
    ep = BY_SLUG[slug]
    charge = price_of(ep, {"audio_url": "u"}, measured=minutes)
    assert charge == expected
    assert charge <= price_of(ep, {"audio_url": "u"})


def test_every_capability_priced():
    assert {ep["capability"] for _, ep in ENDPOINTS} == set(UNIT_BY_CAPABILITY)
    assert len(ENDPOINTS) >= 36


@pytest.mark.parametrize("slug,tokens,expected", [
    ("openai/gpt-4o", (1000, 1000), 12),           # 2.25 + 9 = 11.25 -> 12
    ("openai/gpt-4", (70, 53), 5),                 # 1.89 + 2.862 = 4.752 -> 5
    ("openai/gpt-4o-mini", (10, 10), 1),           # a fraction of a credit: the 1-credit minimum
    ("openai/text-embedding-3-large", (100_000, 0), 12),  # 11.7 -> 12
])
def test_token_prices(slug, tokens, expected):
    ep = BY_SLUG[slug]
    assert token_price(ep, *tokens) == expected
    from tidehub.catalog import load_catalog

    rule = load_catalog().endpoints[slug].price
    assert rule.tokens(*tokens) == expected
    assert rule.charge({}, {"input_tokens": tokens[0], "output_tokens": tokens[1]}, held=expected - 1) == expected - 1


def test_token_hold_covers_the_most_output_allowed():
    from tidehub.catalog import load_catalog

    rule = load_catalog().endpoints["openai/gpt-4o"].price
    messages = [{"role": "user", "content": "x" * 4000}]
    hold = rule.quote({"messages": messages, "max_tokens": 500}).credits
    assert hold >= rule.tokens(1000, 500)  # 4,000 characters are at most ~1,000 English tokens
    assert rule.quote({"messages": messages}).credits >= rule.tokens(1000, 4096)
