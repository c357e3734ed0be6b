"""Upstream adapters by name: a channel's ``adapter`` setting picks one."""

from __future__ import annotations

from tidehub.core.ports import AdapterFactory
from tidehub.providers.fal import FalAdapter
from tidehub.providers.midjourney import MidjourneyAdapter
from tidehub.providers.nexus import NexusAdapter
from tidehub.providers.openai import OpenAIAdapter
from tidehub.providers.replicate import ReplicateAdapter

# name -> factory(base_url, credential, **options); gateway.py hands this registry to core.
ADAPTERS: dict[str, AdapterFactory] = {
    "fal": FalAdapter,
    "openai": OpenAIAdapter,
    "nexus": NexusAdapter,
    "midjourney": MidjourneyAdapter,
    "replicate": ReplicateAdapter,
}
