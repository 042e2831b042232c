"""The configs: `--config=configs/FILE.py[:ARGS]`; each module's get_config(arg)
returns one. Importable, so that configs build on each other by import."""
