"""Scheduling policies, one module each, behind `runtime.agents.policy.base.Policy`."""

from runtime.agents.policy.astraea import Astraea, AstraeaConfig
from runtime.agents.policy.base import Policy, PolicyContext, SegmentStats
from runtime.agents.policy.continuum import Continuum
from runtime.agents.policy.fcfs import Fcfs
from runtime.agents.policy.infercept import InferCept
from runtime.agents.policy.plas import Plas
from runtime.agents.policy.sjf import Sjf

POLICIES: dict[str, type[Policy]] = {p.name: p for p in (Fcfs, Sjf, Plas, InferCept, Continuum, Astraea)}


def make_policy(name: str, ctx: PolicyContext) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown policy '{name}'; choose from {', '.join(POLICIES)}")
    return POLICIES[name](ctx)


__all__ = ["POLICIES", "Astraea", "AstraeaConfig", "Policy", "PolicyContext", "SegmentStats", "make_policy"]
