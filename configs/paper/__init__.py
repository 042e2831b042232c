"""The paper studies' configs (each docstring gives its commands) and their
shared budget (budget.py) and stages (study.py)."""
