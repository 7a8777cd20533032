"""Promote: the training flow's stage around the champion protocol's compare-and-set
(`champion/promotion.py`).

It retries like every stage that talks to the registry; the protocol itself makes a retry finish the same
compare-and-set rather than skip it.
"""

from champion.promotion import promote as move_to_champion
from tasks.stage import mlflow_stage

promote = mlflow_stage(move_to_champion, name="promote")
