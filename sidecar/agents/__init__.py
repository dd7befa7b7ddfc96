"""Agents: a model-and-tools loop with budgets, recorded as replayable transcripts."""
