"""Scheduling policies, one module each, behind `runtime.agents.policy.base.Policy`."""

import dataclasses

from runtime.agents.policy.astraea import Astraea, AstraeaConfig
from runtime.agents.policy.base import Policy, PolicyContext, SegmentStats
from runtime.agents.policy.continuum import Continuum, ContinuumConfig
from runtime.agents.policy.fcfs import Fcfs
from runtime.agents.policy.infercept import InferCept
from runtime.agents.policy.plas import Plas, PlasConfig
from runtime.agents.policy.sjf import Sjf

POLICIES: dict[str, type[Policy]] = {p.name: p for p in (Fcfs, Sjf, Plas, InferCept, Continuum, Astraea)}
CONFIGS: dict[str, type] = {"astraea": AstraeaConfig, "plas": PlasConfig, "continuum": ContinuumConfig}


def make_config(name: str, overrides: dict[str, str | float | int | bool] | None):
    """The policy's config dataclass with `overrides` applied (strings are converted to the field's type)."""
    if not overrides:
        return None
    cls = CONFIGS.get(name)
    if cls is None:
        raise ValueError(f"policy '{name}' has no configuration (configurable: {', '.join(CONFIGS)})")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, raw in overrides.items():
        if key not in fields:
            raise ValueError(f"{name} config has no field '{key}'; fields: {', '.join(fields)}")
        default = getattr(cls(), key)
        try:
            if isinstance(default, bool):
                value = raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes")
            elif isinstance(default, tuple):
                value = tuple(float(x) for x in str(raw).split("/")) if isinstance(raw, str) else tuple(raw)
            else:
                value = type(default)(raw)
        except ValueError as e:
            raise ValueError(f"{name} config field '{key}': cannot use {raw!r} ({e})") from e
        kwargs[key] = value
    return cls(**kwargs)


def make_policy(name: str, ctx: PolicyContext, overrides: dict | None = None) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown policy '{name}'; choose from {', '.join(POLICIES)}")
    config = make_config(name, overrides)
    return POLICIES[name](ctx, config) if config is not None else POLICIES[name](ctx)


__all__ = ["CONFIGS", "POLICIES", "Astraea", "AstraeaConfig", "Policy", "PolicyContext", "SegmentStats",
           "make_config", "make_policy"]
