"""Training entry points, one per discovered use case: bind its spec and run the generic gated pipeline.

Their parameters are the fields of the spec module's typed `Params`, which the Prefect UI renders as the
deployment's "Run" form (`flows/form.py`: in the spec's order, bounds in view, empty optional fields unset).
Each is bound to a module-level name `<use case>_training`, so a work-pool worker can import it.

The pipeline runs inside this flow's own run (not as a subflow), so the run people open from a deployment
holds every stage, the validation and decision artifacts and the logs; its state message is the decision.

A run started through a deployment (Prefect UI, schedule, `mlops.data.arrived`, the monitoring alert) reads
`data` only from the data roots (MLOPS_DATA_ROOTS; `tasks.ingest.data_roots`); the local CLI is not confined.
"""

from prefect.runtime import deployment
from prefect.states import Completed

from flows.form import flows_as_attributes, form_flow
from flows.gated_training import gated_training
from tasks.ingest import confine_to_data_roots
from tasks.tuning.apply import spec_from_study
from usecases import SPEC_MODULES, spec_module


def training_flow(use_case: str):
    """A `<use case>-training` flow whose parameters are the fields of the use case's typed `Params`."""
    module = spec_module(use_case)

    def run(params):
        if params.data and deployment.id:  # started through a deployment: UI, schedule, event, API
            confine_to_data_roots(params.data)  # else DataPathRefused: the run fails, nothing trained
        spec, params = spec_from_study(module.build_spec, params)  # --params-from study:NAME, if given
        outcome = gated_training.fn(spec, params)
        # The state's name is the badge on the run's page: Promoted / Registered / Rejected, not "Completed".
        decision = outcome.decision
        name = decision.status.capitalize()
        return Completed(name=name, message=f"{decision.status}: {decision.summary}", data=outcome)

    doc = f"Gated training of the {use_case} use case: {(module.__doc__ or '').strip().splitlines()[0]}"
    return form_flow(run, module.Params, f"{use_case}-training", doc, log_prints=True)


TRAINING_FLOWS = {name: training_flow(name) for name in SPEC_MODULES}
__getattr__ = flows_as_attributes(TRAINING_FLOWS, __name__)  # `<use case>_training`
