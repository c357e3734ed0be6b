"""A fake upstream that speaks the vendors' real protocols and produces real files.

Tests, demos and benchmarks point the gateway's adapters at it instead of fal.ai; nothing in the
gateway's core knows it exists.
"""

from tidehub.sim.app import SimRuntime, create_sim_app
from tidehub.sim.behaviour import SimBehaviour
from tidehub.sim.channels import CONTENT_POLICY_MARKER, FLAKY_MARKER, Channel
from tidehub.sim.openai import STREAM_CUT_MARKER
from tidehub.sim.server import SimServer, run_sim, serve_sim
from tidehub.sim.settings import SimSettings

__all__ = [
    "CONTENT_POLICY_MARKER", "FLAKY_MARKER", "STREAM_CUT_MARKER", "Channel", "SimBehaviour", "SimRuntime", "SimServer",
    "SimSettings", "create_sim_app", "run_sim", "serve_sim",
]
