"""Champion and challenger on live traffic: the paired scores the model server records, and what they say.

    pairs.py     the paired records (both versions' scores per request or event) and the labels, in batches:
                 Parquet files under MLOPS_HOME locally, PostgreSQL in server mode (MLOPS_PAIRS_URL)
    postgres.py  the PostgreSQL tables of the pair store (created when missing)
    spool.py     the model server's pair writer: batches, and a spool file per process, so that a killed
                 server loses only what the challenger had not scored yet, and says how many on restart
    evidence.py  the pairs of the current champion and challenger joined with their labels: the spec's
                 metrics for both on the same rows, alert rates, disagreement, McNemar, a paired bootstrap
    decision.py  the use case's `ChallengerRule` on that evidence (wait, promote, retire) and the alias move
    records.py   the comparison's MLflow run (`<use case>-challenger`), its report and Prefect artifact

`flows/challenger.py` runs evidence → decision → records; `mlops compare` runs that flow.
"""
