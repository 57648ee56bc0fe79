"""The scoring pipeline, one module per stage; `run.py` strings them together."""
