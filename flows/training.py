"""Training entry points, one per discovered use case: bind its spec and run the generic gated flow.

Their typed parameters (the spec module's `Params`) are what the Prefect UI renders as the "Run" form of a
deployment. Each is bound to a module-level name `<use case>_training`, so a work-pool worker can import it.
"""

from prefect import flow

from flows.gated_training import TrainingOutcome, gated_training
from usecases import SPEC_MODULES, spec_module


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


TRAINING_FLOWS = {name: training_flow(name) for name in SPEC_MODULES}
globals().update({f"{name}_training": f for name, f in TRAINING_FLOWS.items()})
