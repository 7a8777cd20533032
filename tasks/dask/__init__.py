"""The Dask executor (`--executor dask`): the data stages with the table spread over a Dask cluster's workers.

The same checks, features, windows and model as the in-process stages, every task holding about
`partition_rows` rows, so a worker's memory follows that, not the table's size. Supported for use cases whose
features declare `feature_keys` or a `feature_history`, split by calendar days, with no raw check view,
model selection, target transform or offset, trained from scratch; anything else is refused before any work
with a message naming what (`executor.unsupported`; run it with `--executor local`).

Modules:
- `cluster`: the settings (MLOPS_DASK_*), prefect-dask's `DaskTaskRunner` on a `LocalCluster` or a scheduler,
  `submit` (a Prefect task run on a worker), the workers' memory settings and trim, the run's scratch folder;
- `executor`: `stages_for`, the flow's stages for the run's executor (`LocalStages` or `DaskStages`);
- `ingest`: the input as a Dask DataFrame, profiled on the workers; its MLflow dataset record;
- `validate`: the GX suite on every partition, uniqueness across partitions;
- `merge`: the partitions' GX results as the whole table's, computed by GX from merged metrics;
- `features`: `build_features` on key shards or time chunks, written once to the scratch folder;
- `split`: the windows, collected or left on the workers; the baselines' sample;
- `train`: the candidate with `xgboost.dask`;
- `score`: batch scoring on the workers (`mlops score --executor dask`).

Nothing is re-exported: import from the module (importing the package loads no Dask).
"""
