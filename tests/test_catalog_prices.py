"""Checks of the `price:` rules in tidehub/catalog/data/*.yaml, and of the gateway's own pricing code
(`PriceRule` in tidehub/catalog/pricing.py, the measurements of tidehub/core/billing.py) on them.

Each endpoint carries a declarative price rule (no code, no eval). The shape of every rule is checked
against its input schema; every example and enum combination must get a price from the real rule; and
the hand-derived prices at the end pin what it computes:

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
import re
from pathlib import Path

import pytest
import yaml

from tidehub.catalog import load_catalog
from tidehub.catalog.pricing import PriceRule
from tidehub.core.billing import measure, usage_tokens

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
CATALOG = load_catalog()
IDS = [f"{name}:{ep['slug']}" for name, ep in ENDPOINTS]


# ---------------------------------------------------------------------------------------------
# helpers for the checks of the data (the prices themselves come from the gateway's own code)


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


def rule(slug: str) -> PriceRule:
    """The price rule the gateway built from the catalog file (tidehub/catalog/pricing.py)."""
    return CATALOG.endpoints[slug].price


def hold(slug: str, inp: dict) -> int:
    """What a submit of ``inp`` holds: the rule's quote, as TaskService and the relay ask for it."""
    return rule(slug).quote(inp).credits


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
        price = hold(ep["slug"], example)
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
    assert hold(ep["slug"], {}) > 0
    for combo in itertools.product(*choices):
        price = hold(ep["slug"], dict(zip(fields, combo)))
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
])
def test_pinned_prices(slug, inp, expected):
    quote = rule(slug).quote(inp)
    assert quote.credits == expected and not quote.measured
    # A rule measured by nothing charges what it held.
    assert rule(slug).charge(inp, measure(CATALOG.endpoints[slug].capability, {}), quote.credits) == expected


@pytest.mark.parametrize("slug", ["openai/whisper-v3/transcribe", "fal/wizper/transcribe"])
def test_transcription_holds_ten_minutes(slug):
    quote = rule(slug).quote({"audio_url": "u"})
    assert quote.credits == 54 and quote.measured  # ceil(5.4 x 10)


@pytest.mark.parametrize("slug,output,expected", [
    ("openai/whisper-v3/transcribe", {"duration": 180.0}, 17),      # 3 min: ceil(16.2)
    ("openai/whisper-v3/transcribe", {"duration": 6.0}, 1),         # 0.1 min: ceil(0.54)
    ("fal/wizper/transcribe", {"chunks": [{"timestamp": [0.0, 0.0]}]}, 1),  # minimum 1
    ("fal/wizper/transcribe", {"chunks": [{"timestamp": [0, 250.5]}, {"timestamp": [250.5, 600]}]}, 54),
    ("fal/wizper/transcribe", {"duration": 45 * 60.0}, 54),         # never more than the hold
    ("fal/wizper/transcribe", {"text": "no timing in the result"}, 54),  # nothing measured: the hold
])
def test_measured_charge(slug, output, expected):
    """The charge of a finished transcription: the audio length core/billing reads off the result,
    priced by the rule, at most the hold."""
    held = hold(slug, {"audio_url": "u"})
    charge = rule(slug).charge({"audio_url": "u"}, measure("transcribe", output), held)
    assert charge == expected and charge <= held


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
    price = rule(slug)
    assert price.tokens(*tokens) == expected
    usage = {"prompt_tokens": tokens[0], "completion_tokens": tokens[1], "total_tokens": sum(tokens)}
    measured = measure(CATALOG.endpoints[slug].capability, {"usage": usage})
    assert measured == usage_tokens(usage) == {"input_tokens": tokens[0], "output_tokens": tokens[1]}
    assert price.charge({}, measured, held=expected + 100) == expected
    assert price.charge({}, measured, held=expected - 1) == expected - 1  # never more than the hold
    assert price.charge({}, {}, held=expected + 100) == expected + 100  # no usage came: the hold


def test_token_hold_covers_the_most_output_allowed():
    price = rule("openai/gpt-4o")
    messages = [{"role": "user", "content": "x" * 4000}]
    quote = price.quote({"messages": messages, "max_tokens": 500})
    assert quote.measured and quote.credits >= price.tokens(1000, 500)  # 4,000 characters: ~1,000 tokens
    assert price.quote({"messages": messages}).credits >= price.tokens(1000, 4096)  # max_output when unset
    assert price.quote({"messages": messages, "max_tokens": 500, "n": 3}).credits >= price.tokens(1000, 1500)
    # Embeddings hold nothing for output, whatever the request allows.
    embeddings = rule("openai/text-embedding-3-large")
    assert embeddings.quote({"input": "x" * 4000, "max_tokens": 10**6}) == embeddings.quote({"input": "x" * 4000})
