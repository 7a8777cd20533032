"""A parameters model as a Prefect form (flows/form.py): order, bounds in view, optional fields."""

import pytest
from pydantic import ValidationError

from flows.form import form_order, form_properties, form_signature, from_form, to_form
from usecases.params import MonitorParams, TrainingParams
from usecases.stock.spec import Params as StockParams


def test_data_first_then_the_use_cases_own_fields_then_the_generic_ones():
    order = form_order(StockParams)
    own = [n for n in StockParams.__annotations__ if n != "data" and n not in TrainingParams.model_fields]
    assert "half_life" in StockParams.__annotations__ and "half_life" not in own  # a new default, same place
    generic = [n for n in TrainingParams.model_fields if n != "data"]
    assert order == ["data", *own, *generic]
    assert form_order(MonitorParams) == list(MonitorParams.model_fields)  # no base class: as declared


def test_bounds_are_in_the_description_and_optional_fields_are_plain():
    fields = form_properties(StockParams)
    assert [fields[n]["position"] for n in form_order(StockParams)] == list(range(len(fields)))
    seed = fields["seed"]
    assert seed["minimum"] == 0 and seed["description"].endswith("(≥ 0).")
    rounds = fields["update_rounds"]  # int | None
    assert rounds["type"] == "integer" and "anyOf" not in rounds and "(1 to 20,000)" in rounds["description"]
    assert "leave empty" in rounds["description"]
    name = fields["registered_model"]  # str | None with a pattern: empty must not be invalid
    assert name["type"] == "string" and name["pattern"].startswith("^$|")
    assert fields["update"]["enum"] == ["continue", "refresh"]


def test_the_signature_carries_the_form_and_the_models_defaults():
    signature = form_signature(StockParams)
    assert list(signature.parameters) == form_order(StockParams)
    seed = signature.parameters["seed"].default
    assert seed.default == 42 and seed.json_schema_extra["minimum"] == 0


def test_values_from_the_form_are_validated_by_the_model_and_empty_means_unset():
    params = from_form(StockParams, {"data": "", "registered_model": "", "seed": 3})
    assert params.data is None and params.registered_model is None and params.seed == 3
    assert from_form(StockParams, to_form(params)) == params
    with pytest.raises(ValidationError, match="seed"):
        from_form(StockParams, {"seed": -1})
