"""The `mlops` command line: `main.py` assembles it; `run.py` training, `models.py` the registry's
consumers (score, monitor, serve-model, status, rollback), `servers.py` server mode (deploy, serve,
notify-data, server).

Commands import what they use when they run, so `--help`, `status` and `rollback` never pay for Prefect, Great
Expectations or scikit-learn.
"""
