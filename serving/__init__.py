"""The HTTP model server behind `mlops serve-model` (`app.py`)."""
