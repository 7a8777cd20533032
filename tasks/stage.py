"""The task decorators every stage uses.

No stage is cached: a pipeline stage either has side effects (MLflow, the registry) or works on data that
is too large to hash cheaply, and a surprise cache hit would skip a registration or a promotion.
Stages that talk to the MLflow server retry, since its I/O can fail transiently.
"""

from functools import partial

from prefect import task
from prefect.cache_policies import NONE

stage = partial(task, cache_policy=NONE, persist_result=False)
mlflow_stage = partial(stage, retries=2, retry_delay_seconds=2)
