"""Thin adapters that plug scribe-reward into RL trainers (TRL, verl, OpenRLHF).

They import only `scribe_client`, so a trainer node needs no service dependencies.
"""
