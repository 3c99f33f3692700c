"""Resolving a spec against the catalogue: models, their generators, conditions, options.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tracker.conditions import (
    GENERATOR_IS_SCORING_MODEL,
    ConditionDefinition,
)
from tracker.errors import (
    ConfigError,
    SpecError,
    UnknownModelError,
)
from tracker.planning.model_identity import (
    ModelIdentity,
    allowed_modes,
    attn_for_mode,
    model_identity,
    scorer_version_for,
)
from tracker.specs import ExperimentSpec

# --- resolving a spec against the registry -------------------------------------------------

@dataclass(frozen=True)
class ResolvedCondition:
    """A spec condition for one scoring model: the generator is a concrete model now."""

    definition: ConditionDefinition   # params["generator"] holds the generator's identity
    generator: ModelIdentity | None

    @property
    def key(self) -> tuple[str, str]:
        return (self.definition.name, self.definition.definition_hash())


@dataclass(frozen=True)
class ResolvedModel:
    identity: ModelIdentity            # as used by modes without attention probing
    scorer_version: str
    conditions: tuple[ResolvedCondition, ...]

    def for_mode(self, mode: str) -> ModelIdentity:
        attn = attn_for_mode(mode, self.identity)
        if attn == self.identity.attn_implementation:
            return self.identity
        return ModelIdentity(**{**self.identity.__dict__, "attn_implementation": attn})

    def condition(self, name: str) -> ResolvedCondition:
        return next(c for c in self.conditions if c.definition.name == name)


@dataclass(frozen=True)
class EnqueueOptions:
    models: tuple[str, ...] | None = None
    limit: int | dict[str, int] | None = None  # one cap, or per dataset key ("*": the rest)
    device: str | None = None
    dtype: str | None = None
    data_dir: str | None = None

    def overrides(self, spec: ExperimentSpec) -> dict[str, Any]:
        """What differs from the spec itself (part of the run's identity); data_dir is not."""
        out: dict[str, Any] = {}
        if self.models and list(self.models) != [m.name for m in spec.models]:
            out["models"] = list(self.models)
        if self.limit is not None:
            out["limit"] = self.limit
        if self.device and self.device != spec.device:
            out["device"] = self.device
        if self.dtype:
            out["dtype"] = self.dtype
        return out


def _model_names(spec: ExperimentSpec, options: EnqueueOptions) -> list[tuple[str, str | None, str | None]]:
    if options.models:
        return [(name, options.dtype, None) for name in options.models]
    return [(m.name, options.dtype or m.dtype, m.revision) for m in spec.models]


def resolve_models(spec: ExperimentSpec, options: EnqueueOptions) -> list[ResolvedModel]:
    """Scoring models with their conditions' generators resolved; errors name the field."""
    device = options.device or spec.device
    out = []
    for i, (name, dtype, revision) in enumerate(_model_names(spec, options)):
        where = "--model" if options.models else f"models[{i}]"
        try:
            identity = model_identity(name, device=device, dtype=dtype, revision=revision)
            modes = allowed_modes(name)
        except UnknownModelError as err:
            raise (err if options.models else SpecError(f"spec field `{where}`: {err}")) from err
        except ConfigError as err:
            raise SpecError(f"spec field `{where}`: {err}") from err
        for c in spec.conditions:
            for mode in spec.modes_for(c):
                if mode not in modes:
                    raise SpecError(f"spec field `modes`: model {name} ({identity.family}) cannot score mode "
                                    f"{mode!r} (condition {c.name})", hint=f"its modes: {', '.join(modes)}")
        conditions = tuple(_resolve_condition(spec, c, identity, device) for c in spec.conditions)
        out.append(ResolvedModel(identity, scorer_version_for(identity.family), conditions))
    if spec.staged and len(out) != 1:
        raise SpecError("spec field `models`: a staged spec runs one scoring model per run "
                        f"(its selection is per dataset), got {len(out)}",
                        hint="enqueue it once per model with --model NAME")
    return out


def _resolve_condition(spec: ExperimentSpec, c: ConditionDefinition, scoring: ModelIdentity,
                       device: str) -> ResolvedCondition:
    if not c.needs_surrogate:
        return ResolvedCondition(c, None)
    wanted = c.params.get("generator", GENERATOR_IS_SCORING_MODEL)
    if wanted == GENERATOR_IS_SCORING_MODEL:
        generator = scoring
    else:
        index = [x.name for x in spec.conditions].index(c.name)
        try:
            generator = model_identity(wanted, device=device)
        except UnknownModelError as err:
            raise SpecError(f"spec field `conditions[{index}].params.generator`: {err}") from err
    params = {**c.params, "generator": generator.as_dict()}
    return ResolvedCondition(ConditionDefinition(c.name, c.kind, params, c.mode), generator)
