"""Training entry points, one per discovered use case: bind its spec and run the generic gated pipeline.

Their typed parameters (the spec module's `Params`) are what the Prefect UI renders as the "Run" form of a
deployment. Each is bound to a module-level name `<use case>_training`, so a work-pool worker can import it.

The pipeline runs inside this flow's own run (not as a subflow), so the run people open from a deployment
holds every stage, the validation and decision artifacts and the logs; its state message is the decision.

A run started through a deployment (Prefect UI, schedule, `mlops.data.arrived`, the monitoring alert) reads
`data` only from the data roots (MLOPS_DATA_ROOTS; `infra.servers.data_roots`); the local CLI is not confined.
"""

from prefect import flow
from prefect.runtime import deployment
from prefect.states import Completed

from flows.gated_training import TrainingOutcome, gated_training
from infra.servers import confine_to_data_roots
from usecases import SPEC_MODULES, spec_module


def training_flow(use_case: str):
    """A `<use case>-training` flow whose parameters are the use case's typed `Params`."""
    module = spec_module(use_case)
    Params = module.Params  # noqa: N806 - a class, bound so the annotation below is the real type

    def run(params: Params = Params()) -> TrainingOutcome:  # noqa: B008 - pydantic defaults are immutable
        if params.data and deployment.id:  # started through a deployment: UI, schedule, event, API
            confine_to_data_roots(params.data)  # else DataPathRefused: the run fails, nothing trained
        outcome = gated_training.fn(module.build_spec(params), params)
        return Completed(message=f"{outcome.decision.status}: {outcome.decision.summary}", data=outcome)

    run.__doc__ = (
        f"Gated training of the {use_case} use case: {(module.__doc__ or '').strip().splitlines()[0]}"
    )
    return flow(run, name=f"{use_case}-training", log_prints=True)


TRAINING_FLOWS = {name: training_flow(name) for name in SPEC_MODULES}
globals().update({f"{name}_training": f for name, f in TRAINING_FLOWS.items()})
