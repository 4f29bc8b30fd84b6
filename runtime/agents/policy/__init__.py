"""Scheduling policies, one module each, behind `runtime.agents.policy.base.Policy`."""

import dataclasses

from runtime.agents.policy.astraea import Astraea, AstraeaConfig
from runtime.agents.policy.base import Policy, PolicyContext, SegmentStats
from runtime.agents.policy.clairvoyant import Clairvoyant, ClairvoyantConfig
from runtime.agents.policy.continuum import Continuum, ContinuumConfig
from runtime.agents.policy.fcfs import Fcfs
from runtime.agents.policy.infercept import InferCept
from runtime.agents.policy.lamps import Lamps, LampsConfig
from runtime.agents.policy.plas import Plas, PlasConfig
from runtime.agents.policy.sjf import Sjf

POLICIES: dict[str, type[Policy]] = {
    p.name: p for p in (Fcfs, Sjf, Plas, InferCept, Continuum, Lamps, Astraea, Clairvoyant)}
# Bounds that read a job's future segments, which only the simulator knows: reported next to the policies in
# the simulator's tables, never served (a real engine sees one segment of a job at a time).
SIMULATION_ONLY = ("clairvoyant",)
CONFIGS: dict[str, type] = {"astraea": AstraeaConfig, "plas": PlasConfig, "continuum": ContinuumConfig,
                            "lamps": LampsConfig, "clairvoyant": ClairvoyantConfig}


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


def check_servable(name: str, extra: tuple[str, ...] = ()) -> None:
    """Raise a ValueError naming the problem unless a real engine can run policy `name` (or it is in `extra`)."""
    if name in extra:
        return
    choices = ", ".join((*extra, *(p for p in POLICIES if p not in SIMULATION_ONLY)))
    if name in SIMULATION_ONLY:
        raise ValueError(f"policy '{name}' is a bound that reads jobs' future segments, which only the simulator "
                         f"has; it cannot be served (choose one of {choices})")
    if name not in POLICIES:
        raise ValueError(f"unknown policy '{name}'; choose one of {choices}")


def make_policy(name: str, ctx: PolicyContext, overrides: dict | None = None) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown policy '{name}'; choose from {', '.join(POLICIES)}")
    config = make_config(name, overrides)
    return POLICIES[name](ctx, config) if config is not None else POLICIES[name](ctx)


__all__ = ["CONFIGS", "POLICIES", "SIMULATION_ONLY", "Astraea", "AstraeaConfig", "Clairvoyant", "Policy",
           "PolicyContext", "SegmentStats", "check_servable", "make_config", "make_policy"]
