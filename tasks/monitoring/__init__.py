"""Monitoring: watching a promoted model on data it has not seen (`mlops monitor`, `flows/monitoring.py`).

Labels arrive late (fraud is confirmed weeks later, a volatility target only once the horizon has passed),
so the monitor answers three questions from what is available now, each against a *reference profile*
recorded when the version was trained:

1. Did the inputs move? (`drift`)
2. Is the model probably worse? (`estimate`, before labels; realised metrics on the labelled rows)
3. What is the verdict? (`verdict`: "degraded", "drift" or "healthy", with reasons)

Modules, bottom to top:

- `numeric`: float columns, finite-or-None values, JSON-safe results, the reference's bins, number formats.
- `drift`: PSI, KS and scaled Wasserstein-1 per feature, PSI of the scores (`FeatureDrift`).
- `estimate`: CBPE for binary models, expected MAE/RMSE for regression.
- `reference`: the reference profile -- built and recorded at training (`record_profile`), read or rebuilt
  at monitoring (`reference_profile`).
- `verdict`: `Verdict`, the `Assessment` that carries it with its evidence, and the rules that decide it.
- `report`: the self-contained HTML report of an assessment.
- `stages`: the monitoring flow's Prefect stages (window, assess, record, alert) and `thresholds_for`.

The statistics are plain numpy/pandas (scikit-learn for the isotonic calibration, matplotlib lazily for the
report), testable without an orchestrator or a tracking server. The package re-exports nothing: import from
its modules.
"""
