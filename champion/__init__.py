"""The champion protocol: the one place that decides what consumers of `models:/<name>@champion` get.

    lock.py       one lock per registered model around every change of the alias (file, Postgres advisory
                  lock or Prefect concurrency slot, wherever the registry lives)
    promotion.py  the compare-and-set move of `@champion`, its history on the registered model, the tags
                  saying why a version is not champion
    lifecycle.py  status (champion, challenger, why, earlier champions, refused candidates) and rollback
    challenger.py the `challenger` alias (the version scored in shadow): set, retire, promote on live evidence
    loading.py    loading one pinned version for scoring, serving, monitoring and champion re-scoring

Training (`flows/gated_training.py`) takes the lock, re-scores the champion, gates, registers and promotes
inside it (or makes a candidate that only lost to the champion the challenger); `mlops rollback` and
`mlops challenge` move their alias under the same lock; consumers load through `loading.py`.
Nothing here imports Prefect at module level, so `mlops status` and `mlops rollback` start fast.
"""
