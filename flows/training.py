"""Training entry points, one per use case: bind the use case's spec and run the generic gated flow.

Their typed parameters (the spec module's `Params`) are what the Prefect UI renders as the "Run" form of a
deployment. A new use case adds one line here, naming its spec module in `usecases/__init__.py`.
"""

from prefect import flow

from flows.gated_training import TrainingOutcome, gated_training
from usecases import spec_module


def training_flow(use_case: str):
    """A `<use case>-training` flow whose parameters are the use case's typed `Params`."""
    module = spec_module(use_case)
    Params = module.Params  # noqa: N806 - a class, bound so the annotation below is the real type

    def run(params: Params = Params()) -> TrainingOutcome:  # noqa: B008 - pydantic defaults are immutable
        return gated_training(module.build_spec(params), params)

    run.__doc__ = (
        f"Gated training of the {use_case} use case: {(module.__doc__ or '').strip().splitlines()[0]}"
    )
    return flow(run, name=f"{use_case}-training")


fraud_training = training_flow("fraud")
stock_training = training_flow("stock")

TRAINING_FLOWS = {"fraud": fraud_training, "stock": stock_training}
