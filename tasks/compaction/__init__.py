"""Compaction: a smaller model made from a registered teacher, for small devices and fast single-row serving.

    teacher version → its windows re-cut from its recorded data (digest and windows checked) → candidates:
    distilled students, the teacher cut to fewer rounds, the teacher pruned to a smaller depth → each measured
    on the teacher's test window (primary metric and its ratio to the teacher, size, trees, nodes, single-row
    latency) → gates → the smallest candidate that passes → compiled with TL2cgen for this platform

The gates (`usecases.spec.CompactGates`) have overridable defaults: on the teacher's test window the primary
metric must keep `min_ratio` of the teacher's (direction-aware), the teacher's absolute gates still hold, and
the artifact may not grow. Size and latency are always measured and reported. `flows/compaction.py` runs the
stages; registration and promotion are the factory's own (`tasks/register.py`, `tasks/promote.py`).

Modules (import names from them; this package re-exports nothing):

- `booster`: links from margin to prediction, predicting in target units, a logged model's booster and config,
  tree statistics.
- `teacher`: the teacher version (`load_teacher`) and its rebuilt windows (`rebuild_windows`).
- `candidates`: distilled students, cut and depth-pruned teachers (`build_candidates`).
- `measure`: quality, size and single-row latency of the teacher and every candidate.
- `gates`: the compact gates, the choice of candidate, and the teacher-is-champion gate.
- `compile`: TL2cgen compilation and the platform a library was built for.
- `consumer`: what a service loads (`open_compact`, `CompactPredictor`), falling back to the booster.
- `records`: the MLflow run, the version's tags and card, the report, the decision and its event.
"""
