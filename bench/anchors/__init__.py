"""The engines bench/local_engine.py measures, one module each, each runnable as a subprocess that
prints JSON (`common.main`): ours, llamacpp, ortgenai, hf; plus `environment` (installs and builds
what the anchors need) and `report` (derived numbers and the Markdown table)."""
