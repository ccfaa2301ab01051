"""Workstation side: training, evaluation, export and indexing (imports torch)."""
