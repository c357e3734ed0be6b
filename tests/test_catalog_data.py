"""Checks of the model catalog data in tidehub/catalog/data/*.yaml.

The YAML files are the source of the MS endpoint marketplace and of the Hub model ids; these tests
pin their shape, the JSON Schemas, the examples, and the slugs / Hub ids the product documents promise.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from pathlib import Path

import jsonschema
import pytest
import yaml
from jsonschema import Draft7Validator

DATA_DIR = Path(__file__).resolve().parents[1] / "tidehub" / "catalog" / "data"

CAPABILITIES = {"image", "video", "audio", "transcribe", "chat", "embeddings"}
MODES = {
    "text-to-image", "image-edit", "text-to-video", "image-to-video", "reference-to-video",
    "first-last-frame-to-video", "video-edit", "music-generate", "transcribe", "chat", "embeddings",
}
#: Adapters a catalog entry may name, and the keys of their upstream spec.
UPSTREAM_KEYS = {"fal": {"model", "rename"}, "openai": {"model", "api"}, "nexus": {"model", "api", "rename"},
                 "replicate": {"model", "rename"}, "midjourney": {"model", "api"}}
OUTPUT_KEYS = {"image": "images", "video": "video", "audio": "audio", "transcribe": "text", "chat": "choices",
               "embeddings": "data"}
ENDPOINT_KEYS = {
    "slug", "model", "hub_ids", "capability", "mode", "title", "description", "tags",
    "upstream", "timing", "input_schema", "output_schema", "examples", "price",
}

# Every endpoint slug of the MS endpoint directory: 25 video, 8 image, 1 audio.
SEED_001_SLUGS = [
    "google/veo-3.1/text-to-video",
    "google/veo-3.1/image-to-video",
    "google/veo-3.1/reference-to-video",
    "google/veo-3.1/first-last-frame-to-video",
    "google/veo-3.1/fast/text-to-video",
    "google/veo-3.1/fast/image-to-video",
    "google/veo-3.1/fast/reference-to-video",
    "google/veo-3.1/lite/text-to-video",
    "google/veo-3.1/lite/image-to-video",
    "google/veo-3/text-to-video",
    "google/veo-3/image-to-video",
    "kuaishou/kling-v3/standard/text-to-video",
    "kuaishou/kling-v3/standard/image-to-video",
    "kuaishou/kling-v3/pro/text-to-video",
    "kuaishou/kling-v3/pro/image-to-video",
    "alibaba/wan-2.7/text-to-video",
    "alibaba/wan-2.7/image-to-video",
    "alibaba/wan-2.7/reference-to-video",
    "alibaba/wan-2.7/edit-video",
    "bytedance/seedance-2.0/text-to-video",
    "bytedance/seedance-2.0/image-to-video",
    "bytedance/seedance-2.0/reference-to-video",
    "bytedance/seedance-2.0/fast/text-to-video",
    "bytedance/seedance-2.0/fast/image-to-video",
    "bytedance/seedance-2.0/fast/reference-to-video",
    "google/nano-banana/text-to-image",
    "google/nano-banana/edit",
    "google/nano-banana-2/text-to-image",
    "google/nano-banana-2/edit",
    "google/nano-banana-pro/text-to-image",
    "google/nano-banana-pro/edit",
    "openai/gpt-image-2/text-to-image",
    "openai/gpt-image-2/edit",
    "elevenlabs/elevenlabs-music/music-generate",
]
TRANSCRIBE_SLUGS = ["openai/whisper-v3/transcribe", "fal/wizper/transcribe"]

# Hub model ids of the Hub overview plus the transcription ids.
SEED_000_HUB_IDS = [
    "nano-banana", "nano-banana-2", "nano-banana-pro", "gpt-image-2",
    "nano-banana-edit", "nano-banana-2-edit", "nano-banana-pro-edit", "gpt-image-2-edit",
    "veo-3.1", "veo-3.1-fast", "veo-3.1-lite", "veo-3.1-image", "veo-3.1-ref", "veo-3.1-first-last",
    "kling-v3-pro", "kling-v3-standard",
    "wan-2.7", "wan-2.7-image", "wan-2.7-ref", "wan-2.7-edit",
    "seedance-2.0", "seedance-2.0-fast",
    "veo-3",
    "elevenlabs-music",
    "whisper-v3", "wizper",
]

# The four quick examples of the Hub overview, verbatim.
QUICK_EXAMPLES = [
    ("nano-banana-pro", {
        "prompt": "A photorealistic black labrador swimming, half above water, half underwater",
        "resolution": "2K",
        "aspect_ratio": "1:1",
    }),
    ("veo-3.1-fast", {
        "prompt": "Cinematic drone shot flying through ancient stone ruins at golden hour",
        "duration": "8s",
        "resolution": "720p",
        "aspect_ratio": "16:9",
        "generate_audio": True,
    }),
    ("elevenlabs-music", {
        "prompt": "Uplifting lo-fi hip-hop with mellow piano and vinyl crackle",
        "music_length_ms": 30000,
    }),
    ("whisper-v3", {
        "audio_url": "https://example.com/audio.mp3",
        "language": "en",
        "timestamps": "word",
    }),
]

# Hub ids that must be listed on more than one endpoint (the gateway picks the mode from the input).
MULTI_MODE_HUB_IDS = {
    "kling-v3-pro": {"kuaishou/kling-v3/pro/text-to-video", "kuaishou/kling-v3/pro/image-to-video"},
    "kling-v3-standard": {"kuaishou/kling-v3/standard/text-to-video",
                          "kuaishou/kling-v3/standard/image-to-video"},
    "seedance-2.0": {"bytedance/seedance-2.0/text-to-video", "bytedance/seedance-2.0/image-to-video",
                     "bytedance/seedance-2.0/reference-to-video"},
    "seedance-2.0-fast": {"bytedance/seedance-2.0/fast/text-to-video",
                          "bytedance/seedance-2.0/fast/image-to-video",
                          "bytedance/seedance-2.0/fast/reference-to-video"},
    "veo-3": {"google/veo-3/text-to-video", "google/veo-3/image-to-video"},
}


def _load_files():
    files = sorted(DATA_DIR.glob("*.yaml"))
    return [(path, yaml.safe_load(path.read_text(encoding="utf-8"))) for path in files]


FILES = _load_files()
ENDPOINTS = [(path.name, ep) for path, doc in FILES for ep in (doc or {}).get("endpoints", [])]
BY_SLUG = {ep["slug"]: ep for _, ep in ENDPOINTS}


def _hub_index():
    index = defaultdict(list)
    for _, ep in ENDPOINTS:
        for hub_id in ep.get("hub_ids") or []:
            index[hub_id].append(ep)
    return index


HUB_INDEX = _hub_index()


def _required(ep) -> frozenset:
    return frozenset(ep["input_schema"].get("required", []))


def select_endpoint(hub_id: str, inp: dict):
    """The gateway's rule: among the endpoints of a hub id, the one whose required fields are all present,
    with the most required fields. Returns None when no endpoint fits; fails on a tie."""
    candidates = [ep for ep in HUB_INDEX[hub_id] if _required(ep) <= set(inp)]
    if not candidates:
        return None
    best = max(len(_required(ep)) for ep in candidates)
    top = [ep for ep in candidates if len(_required(ep)) == best]
    assert len(top) == 1, f"{hub_id}: ambiguous endpoint choice {[ep['slug'] for ep in top]} for {sorted(inp)}"
    return top[0]


def _ids(items):
    return [f"{name}:{ep['slug']}" for name, ep in items]


# ---------------------------------------------------------------------------------------------
# files and top-level shape


def test_data_files_exist():
    names = {path.name for path, _ in FILES}
    assert len(FILES) >= 8, names
    for expected in ("google-nano-banana.yaml", "openai-gpt-image-2.yaml", "google-veo.yaml",
                     "kuaishou-kling-v3.yaml", "alibaba-wan-2.7.yaml", "bytedance-seedance-2.0.yaml",
                     "elevenlabs-music.yaml", "fal-transcription.yaml"):
        assert expected in names


@pytest.mark.parametrize("path,doc", FILES, ids=[p.name for p, _ in FILES])
def test_file_top_level_shape(path, doc):
    assert path.read_text(encoding="utf-8").startswith("# "), "first line must be a comment naming the family"
    assert isinstance(doc, dict)
    # `schemas` holds YAML anchors that several entries of the file share.
    assert set(doc) - {"schemas"} == {"vendor", "endpoints"}
    assert isinstance(doc["vendor"], str) and doc["vendor"]
    assert isinstance(doc["endpoints"], list) and doc["endpoints"]


@pytest.mark.parametrize("name,ep", ENDPOINTS, ids=_ids(ENDPOINTS))
def test_endpoint_shape(name, ep):
    assert set(ep) - {"relay_only"} == ENDPOINT_KEYS, set(ep) ^ ENDPOINT_KEYS
    for key in ("slug", "model", "title", "description"):
        assert isinstance(ep[key], str) and ep[key].strip(), key
    assert ep["capability"] in CAPABILITIES
    assert ep["mode"] in MODES
    assert isinstance(ep["hub_ids"], list)
    assert all(isinstance(h, str) and h for h in ep["hub_ids"])
    assert len(set(ep["hub_ids"])) == len(ep["hub_ids"])
    assert isinstance(ep["tags"], list) and ep["tags"]
    assert all(isinstance(t, str) and t for t in ep["tags"])

    upstream = ep["upstream"]
    assert upstream and set(upstream) <= set(UPSTREAM_KEYS)
    props = ep["input_schema"]["properties"]
    for adapter, spec in upstream.items():
        assert set(spec) <= UPSTREAM_KEYS[adapter] and isinstance(spec["model"], str) and spec["model"]
        if adapter == "fal":
            assert "/" in spec["model"]
        for hub_field, upstream_field in (spec.get("rename") or {}).items():
            assert hub_field in props, f"rename of unknown field {hub_field}"
            assert isinstance(upstream_field, str) and upstream_field

    timing = ep["timing"]
    assert set(timing) == {"queue_s", "run_s"}
    assert all(isinstance(v, (int, float)) and v >= 0 for v in timing.values()) and timing["run_s"] > 0

    assert isinstance(ep["examples"], list) and ep["examples"], "each endpoint needs an example"


# ---------------------------------------------------------------------------------------------
# schemas and examples


def _walk_properties(schema, path="input_schema"):
    """Yield (path, property schema) for every declared property, recursively."""
    for key, sub in (schema.get("properties") or {}).items():
        yield f"{path}.{key}", sub
        yield from _walk_properties(sub, f"{path}.{key}")
        items = sub.get("items")
        if isinstance(items, dict):
            yield from _walk_properties(items, f"{path}.{key}[]")


@pytest.mark.parametrize("name,ep", ENDPOINTS, ids=_ids(ENDPOINTS))
def test_input_schema(name, ep):
    schema = ep["input_schema"]
    Draft7Validator.check_schema(schema)
    assert schema["type"] == "object"
    # Chat passes parameters it does not know to the upstream (OpenAI adds them often).
    assert schema["additionalProperties"] is (ep["capability"] == "chat")
    props = schema["properties"]
    assert props
    assert set(schema.get("required", [])) <= set(props)
    for alt in schema.get("anyOf", []) + schema.get("oneOf", []):
        assert set(alt.get("required", [])) <= set(props)
    for path, sub in _walk_properties(schema):
        assert "type" in sub, f"{path} has no type"
        if path.count(".") == 1:  # top-level fields are documented
            assert isinstance(sub.get("description"), str) and sub["description"].strip(), f"{path} description"
        if "default" in sub:
            Draft7Validator(sub).validate(sub["default"])
        if "enum" in sub:
            assert len(set(map(repr, sub["enum"]))) == len(sub["enum"]), f"{path} duplicate enum values"
    # URL-ish fields are declared as URIs
    for key, sub in props.items():
        if key.endswith("_url"):
            assert sub.get("format") == "uri", key
        if key.endswith("_urls"):
            assert sub["type"] == "array" and sub["items"].get("format") == "uri", key


@pytest.mark.parametrize("name,ep", ENDPOINTS, ids=_ids(ENDPOINTS))
def test_output_schema(name, ep):
    schema = ep["output_schema"]
    Draft7Validator.check_schema(schema)
    assert schema["type"] == "object"
    expected_key = OUTPUT_KEYS[ep["capability"]]
    assert expected_key in schema["properties"]
    assert expected_key in schema.get("required", [])


@pytest.mark.parametrize("name,ep", ENDPOINTS, ids=_ids(ENDPOINTS))
def test_examples_validate(name, ep):
    validator = Draft7Validator(ep["input_schema"], format_checker=Draft7Validator.FORMAT_CHECKER)
    for example in ep["examples"]:
        errors = sorted(validator.iter_errors(example), key=str)
        assert not errors, f"{ep['slug']} example {example}: {[e.message for e in errors]}"
        # an example of an endpoint must route back to that endpoint for each of its hub ids
        for hub_id in ep["hub_ids"]:
            chosen = select_endpoint(hub_id, example)
            assert chosen is not None and chosen["slug"] == ep["slug"], (hub_id, example)


@pytest.mark.parametrize("name,ep", ENDPOINTS, ids=_ids(ENDPOINTS))
def test_example_media_urls_are_remote(name, ep):
    def urls(value):
        if isinstance(value, str) and "://" in value:
            yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from urls(v)
        elif isinstance(value, list):
            for v in value:
                yield from urls(v)

    for example in ep["examples"]:
        for url in urls(example):
            assert url.startswith("https://"), url


@pytest.mark.parametrize("name,ep", ENDPOINTS, ids=_ids(ENDPOINTS))
def test_schemas_compile_with_fastjsonschema(name, ep):
    fastjsonschema = pytest.importorskip("fastjsonschema")
    validate = fastjsonschema.compile(copy.deepcopy(ep["input_schema"]))
    for example in ep["examples"]:
        validate(copy.deepcopy(example))
    fastjsonschema.compile(copy.deepcopy(ep["output_schema"]))


def test_schemas_reject_unknown_fields_and_missing_required():
    for _, ep in ENDPOINTS:
        validator = Draft7Validator(ep["input_schema"])
        example = dict(ep["examples"][0])
        if ep["capability"] != "chat":  # chat passes unknown parameters on (see test_input_schema)
            assert not validator.is_valid({**example, "no_such_field_xyz": 1}), ep["slug"]
        for field in ep["input_schema"].get("required", []):
            broken = {k: v for k, v in example.items() if k != field}
            assert not validator.is_valid(broken), (ep["slug"], field)


# ---------------------------------------------------------------------------------------------
# catalog-wide invariants


def test_slugs_unique():
    slugs = [ep["slug"] for _, ep in ENDPOINTS]
    dupes = {s for s in slugs if slugs.count(s) > 1}
    assert not dupes


def test_every_ms_directory_slug_present():
    assert len(SEED_001_SLUGS) == 34
    assert len(set(SEED_001_SLUGS)) == 34
    missing = [s for s in SEED_001_SLUGS + TRANSCRIBE_SLUGS if s not in BY_SLUG]
    assert not missing
    counts = defaultdict(int)
    for slug in SEED_001_SLUGS:
        counts[BY_SLUG[slug]["capability"]] += 1
    assert dict(counts) == {"video": 25, "image": 8, "audio": 1}
    for slug in TRANSCRIBE_SLUGS:
        assert BY_SLUG[slug]["capability"] == "transcribe"


def test_every_hub_overview_id_present():
    missing = [h for h in SEED_000_HUB_IDS if h not in HUB_INDEX]
    assert not missing


def test_every_endpoint_reachable_from_hub():
    # Entries that take uploads are reachable through the OpenAI-compatible relay only.
    assert all(ep["hub_ids"] for _, ep in ENDPOINTS if not ep.get("relay_only"))


def test_multi_mode_hub_ids():
    for hub_id, slugs in MULTI_MODE_HUB_IDS.items():
        assert {ep["slug"] for ep in HUB_INDEX[hub_id]} == slugs, hub_id


def test_hub_id_endpoints_have_distinct_required_sets():
    for hub_id, eps in HUB_INDEX.items():
        sets = [_required(ep) for ep in eps]
        assert len(set(sets)) == len(sets), f"{hub_id}: endpoints share a required-field set"
        capabilities = {ep["capability"] for ep in eps}
        assert len(capabilities) == 1, f"{hub_id} spans capabilities {capabilities}"


@pytest.mark.parametrize("hub_id,inp", QUICK_EXAMPLES, ids=[h for h, _ in QUICK_EXAMPLES])
def test_quick_examples_validate(hub_id, inp):
    ep = select_endpoint(hub_id, inp)
    assert ep is not None, f"no endpoint of {hub_id} accepts {sorted(inp)}"
    jsonschema.validate(inp, ep["input_schema"], cls=Draft7Validator,
                        format_checker=Draft7Validator.FORMAT_CHECKER)


def test_mode_selection_by_input():
    assert select_endpoint("kling-v3-pro", {"prompt": "p"})["slug"] == "kuaishou/kling-v3/pro/text-to-video"
    assert select_endpoint("kling-v3-pro", {"prompt": "p", "start_image_url": "https://e.com/a.png"})["slug"] \
        == "kuaishou/kling-v3/pro/image-to-video"
    assert select_endpoint("kling-v3-standard", {"multi_prompt": [{"prompt": "p"}]})["slug"] \
        == "kuaishou/kling-v3/standard/text-to-video"
    assert select_endpoint("seedance-2.0", {"prompt": "p"})["slug"] == "bytedance/seedance-2.0/text-to-video"
    assert select_endpoint("seedance-2.0", {"prompt": "p", "image_url": "https://e.com/a.png"})["slug"] \
        == "bytedance/seedance-2.0/image-to-video"
    assert select_endpoint("seedance-2.0-fast", {"prompt": "p", "image_urls": ["https://e.com/a.png"]})["slug"] \
        == "bytedance/seedance-2.0/fast/reference-to-video"
    assert select_endpoint("veo-3", {"prompt": "p"})["slug"] == "google/veo-3/text-to-video"
    assert select_endpoint("veo-3", {"prompt": "p", "image_url": "https://e.com/a.png"})["slug"] \
        == "google/veo-3/image-to-video"


def test_transcription_rename_and_timestamps():
    for slug in TRANSCRIBE_SLUGS:
        ep = BY_SLUG[slug]
        assert ep["upstream"]["fal"]["rename"] == {"timestamps": "chunk_level"}
        ts = ep["input_schema"]["properties"]["timestamps"]
        assert ts["enum"] == ["segment", "word"] and ts["default"] == "segment"
        assert ep["input_schema"]["properties"]["task"]["enum"] == ["transcribe", "translate"]
    assert BY_SLUG["openai/whisper-v3/transcribe"]["upstream"]["fal"]["model"] == "fal-ai/whisper"
    assert BY_SLUG["fal/wizper/transcribe"]["upstream"]["fal"]["model"] == "fal-ai/wizper"
    assert "version" in BY_SLUG["openai/whisper-v3/transcribe"]["input_schema"]["properties"]


def test_music_requires_prompt_or_composition_plan():
    schema = BY_SLUG["elevenlabs/elevenlabs-music/music-generate"]["input_schema"]
    v = Draft7Validator(schema)
    plan = {"positive_global_styles": ["folk"], "negative_global_styles": [],
            "sections": [{"section_name": "A", "positive_local_styles": [], "negative_local_styles": [],
                          "duration_ms": 3000, "lines": []}]}
    assert v.is_valid({"prompt": "calm piano"})
    assert v.is_valid({"composition_plan": plan})
    assert not v.is_valid({})
    assert not v.is_valid({"prompt": "calm piano", "composition_plan": plan})
    assert not v.is_valid({"prompt": "calm piano", "music_length_ms": 2999})
    assert not v.is_valid({"prompt": "calm piano", "music_length_ms": 600001})


def test_gpt_image_2_image_size():
    for slug in ("openai/gpt-image-2/text-to-image", "openai/gpt-image-2/edit"):
        ep = BY_SLUG[slug]
        v = Draft7Validator(ep["input_schema"])
        base = dict(ep["examples"][0])
        for ok in ("square_hd", "landscape_16_9", "auto", {"width": 1536, "height": 1024}):
            assert v.is_valid({**base, "image_size": ok}), (slug, ok)
        for bad in ("huge", {"width": 1000, "height": 1024}, {"width": 4096, "height": 1024},
                    {"width": 1024}, {"width": 1024, "height": 1024, "depth": 16}):
            assert not v.is_valid({**base, "image_size": bad}), (slug, bad)


@pytest.mark.parametrize("slug,fal_model", [
    ("google/nano-banana/text-to-image", "fal-ai/nano-banana"),
    ("google/nano-banana/edit", "fal-ai/nano-banana/edit"),
    ("openai/gpt-image-2/text-to-image", "openai/gpt-image-2"),
    ("openai/gpt-image-2/edit", "openai/gpt-image-2/edit"),
    ("google/veo-3.1/text-to-video", "fal-ai/veo3.1"),
    ("google/veo-3.1/fast/image-to-video", "fal-ai/veo3.1/fast/image-to-video"),
    ("google/veo-3.1/lite/text-to-video", "fal-ai/veo3.1/lite"),
    ("google/veo-3/text-to-video", "fal-ai/veo3"),
    ("google/veo-3/image-to-video", "fal-ai/veo3/image-to-video"),
    ("kuaishou/kling-v3/pro/image-to-video", "fal-ai/kling-video/v3/pro/image-to-video"),
    ("alibaba/wan-2.7/edit-video", "fal-ai/wan/v2.7/edit-video"),
    ("bytedance/seedance-2.0/fast/reference-to-video", "bytedance/seedance-2.0/fast/reference-to-video"),
    ("elevenlabs/elevenlabs-music/music-generate", "fal-ai/elevenlabs/music"),
])
def test_fal_model_ids(slug, fal_model):
    assert BY_SLUG[slug]["upstream"]["fal"]["model"] == fal_model


def test_duration_types_follow_fal():
    def duration(slug):
        return BY_SLUG[slug]["input_schema"]["properties"]["duration"]

    assert duration("google/veo-3.1/text-to-video")["enum"] == ["4s", "6s", "8s"]
    assert duration("kuaishou/kling-v3/pro/text-to-video")["enum"] == [str(i) for i in range(3, 16)]
    wan = duration("alibaba/wan-2.7/text-to-video")
    assert wan["type"] == "integer" and (wan["minimum"], wan["maximum"]) == (2, 15)
    assert duration("bytedance/seedance-2.0/text-to-video")["enum"] == ["auto"] + [str(i) for i in range(4, 16)]
