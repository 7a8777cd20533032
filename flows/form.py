"""A parameters model (a use case's `Params`, `MonitorParams`) as a Prefect flow's form.

Prefect renders a flow's parameters as the deployment's "Custom run" form and its Parameters tab. A single
model parameter renders as one collapsed group with its fields out of order, bounds hidden until submit and
every `str | None` field as a type switch, and the Parameters tab shows it as one JSON blob. So the flows
take the model's fields as keyword parameters and carry a schema made from the model:

- ordered: `data` first, then the use case's own fields as it declares them, then the generic ones;
- each bound written into the field's description as well as into the schema;
- optional fields as plain fields that may be left empty: empty means "not set" (the model's default).

The model still validates every value, inside the flow, so the CLI, the form and the deployments share one
definition of what is allowed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from prefect import flow
from pydantic import BaseModel, Field


def form_order(model: type[BaseModel]) -> list[str]:
    """`data` first, then the fields the model's own class declares, then the inherited ones (a use case's new
    default for an inherited field keeps the field where every use case's form has it)."""
    fields = list(model.model_fields)
    inherited = set(getattr(model.__base__, "model_fields", {}))
    own = [n for n in model.__annotations__ if n in model.model_fields and n not in inherited]
    ordered = [n for n in ("data",) if n in fields]
    ordered += [n for n in own if n not in ordered]
    return ordered + [n for n in fields if n not in ordered]


def _bounds(prop: dict) -> str:
    low = prop.get("minimum", prop.get("exclusiveMinimum"))
    high = prop.get("maximum", prop.get("exclusiveMaximum"))

    def number(v):
        return f"{v:,}" if isinstance(v, int) else f"{v:g}"

    if low is not None and high is not None:
        return f"{'>' if 'exclusiveMinimum' in prop else ''}{number(low)} to {number(high)}"
    if low is not None:
        return f"{'>' if 'exclusiveMinimum' in prop else '≥'} {number(low)}"
    if high is not None:
        return f"≤ {number(high)}"
    return ""


def form_properties(model: type[BaseModel]) -> dict[str, dict]:
    """Each field's JSON schema as a form field: positioned, bounds in its description, never a union."""
    schema = model.model_json_schema()
    properties = {}
    for position, name in enumerate(form_order(model)):
        prop = dict(schema["properties"][name])
        variants = prop.pop("anyOf", None)
        if variants:  # `X | None`: the field as X, and empty (absent) means None
            prop.update(next(v for v in variants if v.get("type") != "null"))
            prop.pop("default", None)
            if "pattern" in prop:
                prop["pattern"] = f"^$|{prop['pattern']}"  # an emptied text field is "not set", not invalid
        description = prop.get("description", "").strip().removesuffix(".")
        bounds = _bounds(prop)
        if bounds:
            description = f"{description} ({bounds})"
        if variants and "empty" not in description.lower():
            description = f"{description}. Optional: leave empty for none"
        prop.update(description=f"{description}.", position=position)
        properties[name] = prop
    return properties


def form_signature(model: type[BaseModel]) -> inspect.Signature:
    """Keyword-only parameters in form order, each defaulting to a `Field` that carries its form field.

    Prefect builds a flow's parameter schema from its signature (`parameter_schema`), for the flow and again
    for each deployment, and merges a `Field`'s `json_schema_extra` into each parameter's schema.
    """
    fields = model.model_fields
    return inspect.Signature(
        [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=Field(
                    default=fields[name].default, description=prop["description"], json_schema_extra=prop
                ),
                annotation=Any,
            )
            for name, prop in form_properties(model).items()
        ]
    )


def from_form(model: type[BaseModel], values: dict) -> BaseModel:
    """Validate what the form (or a deployment, an event, the CLI) passed; an emptied field is unset."""
    optional = {n for n, f in model.model_fields.items() if f.default is None}
    return model(**{k: v for k, v in values.items() if not (k in optional and v in ("", None))})


def to_form(params: BaseModel) -> dict:
    """A validated model as the flow's keyword arguments."""
    return params.model_dump()


def form_flow(body: Callable[[Any], Any], model: type[BaseModel], name: str, doc: str, **options):
    """A Prefect flow named `name` whose parameters are `model`'s fields; `body(params)` does the work."""

    def run(**values):
        return body(from_form(model, values))

    run.__signature__ = form_signature(model)
    run.__doc__ = doc
    run.__name__ = run.__qualname__ = name.replace("-", "_")
    return flow(run, name=name, validate_parameters=False, **options)


def flows_as_attributes(flows: Mapping[str, Any], module: str) -> Callable[[str], Any]:
    """A module `__getattr__` serving each flow of `flows` under its name with `_` for `-` (`fraud-training`
    as `flows.training.fraud_training`): the attribute a deployment's entrypoint and a work-pool worker
    import. One flow per discovered use case, so the names cannot be written out in the module."""
    by_attribute = {flow.name.replace("-", "_"): flow for flow in flows.values()}

    def attribute(name: str):
        try:
            return by_attribute[name]
        except KeyError:
            raise AttributeError(f"module {module!r} has no attribute {name!r}") from None

    return attribute
