"""The fal models the sim serves, read straight from the catalog YAML files.

The sim reads the YAML itself rather than importing ``tidehub.catalog`` so that it stays a stand-in
for a foreign vendor: it knows only what fal would know (model id, input schema, rough timing).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

#: Nominal (queue_s, run_s) when a catalog entry gives no timing.
DEFAULT_TIMING: dict[str, tuple[float, float]] = {
    "image": (1.0, 8.0),
    "video": (3.0, 60.0),
    "audio": (2.0, 20.0),
    "transcribe": (1.0, 6.0),
}

#: Substrings of fal ids that select model-specific defaults, most specific first.
_FAMILIES = (
    "nano-banana-2",
    "nano-banana-pro",
    "nano-banana",
    "gpt-image",
    "veo",
    "kling",
    "wan",
    "seedance",
    "elevenlabs/music",
    "wizper",
    "whisper",
)


@dataclass(frozen=True)
class SimModel:
    """One fal model id as the sim sees it.

    ``input_schema`` is the fal-side schema: the catalog's Tidehub schema with any field renames
    applied, since requests arrive in fal's field names.
    """

    fal_id: str
    capability: str
    mode: str = ""
    slug: str = ""
    queue_s: float = 1.0
    run_s: float = 8.0
    input_schema: Mapping[str, Any] = field(default_factory=dict)

    @property
    def app_path(self) -> str:
        """``owner/app``: the part of the id that status, result and cancel URLs keep."""
        return "/".join(self.fal_id.split("/")[:2])

    @property
    def family(self) -> str:
        for name in _FAMILIES:
            if name in self.fal_id:
                return name.replace("elevenlabs/", "")
        return "generic"

    @property
    def is_edit(self) -> bool:
        return self.fal_id.endswith("/edit") or "edit" in self.mode

    @cached_property
    def defaults(self) -> Mapping[str, Any]:
        """Schema defaults, which fal applies to fields the caller left out (read-only: shared)."""
        props = self.input_schema.get("properties") or {}
        return {
            name: spec["default"] for name, spec in props.items() if isinstance(spec, Mapping) and "default" in spec
        }


def load_models(catalog_dirs: Iterable[Path]) -> dict[str, SimModel]:
    """Every fal model named by the ``*.yaml`` files of the given directories, keyed by fal id."""
    models: dict[str, SimModel] = {}
    for directory in catalog_dirs:
        directory = Path(directory)
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.yaml")):
            try:
                document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError) as exc:
                log.warning("sim: skipping unreadable catalog file %s: %s", path, exc)
                continue
            for endpoint in document.get("endpoints") or []:
                model = _model_from_endpoint(endpoint)
                if model is not None:
                    models[model.fal_id] = model
    return models


def _model_from_endpoint(endpoint: Mapping[str, Any]) -> SimModel | None:
    upstream = endpoint.get("upstream") or {}
    fal = upstream.get("fal") if isinstance(upstream, Mapping) else None
    if not isinstance(fal, Mapping) or not fal.get("model"):
        return None
    capability = str(endpoint.get("capability") or "image")
    nominal_queue, nominal_run = DEFAULT_TIMING.get(capability, (1.0, 8.0))
    timing = endpoint.get("timing") or {}
    rename = fal.get("rename") or fal.get("input_map") or {}
    return SimModel(
        fal_id=str(fal["model"]).strip("/"),
        capability=capability,
        mode=str(endpoint.get("mode") or ""),
        slug=str(endpoint.get("slug") or ""),
        queue_s=float(timing.get("queue_s", nominal_queue)),
        run_s=float(timing.get("run_s", nominal_run)),
        input_schema=_renamed_schema(endpoint.get("input_schema") or {}, rename),
    )


def _renamed_schema(schema: Mapping[str, Any], rename: Mapping[str, str]) -> dict[str, Any]:
    """The schema with Tidehub field names replaced by the fal names the request will carry."""
    schema = copy.deepcopy(dict(schema))
    if not rename:
        return schema

    def fal_name(name: str) -> str:
        return str(rename.get(name, name))

    if isinstance(schema.get("properties"), Mapping):
        schema["properties"] = {fal_name(k): v for k, v in schema["properties"].items()}
    if isinstance(schema.get("required"), list):
        schema["required"] = [fal_name(k) for k in schema["required"]]
    for combinator in ("anyOf", "oneOf"):
        for branch in schema.get(combinator) or []:
            if isinstance(branch, dict) and isinstance(branch.get("required"), list):
                branch["required"] = [fal_name(k) for k in branch["required"]]
    return schema
