"""Synthetic long-range tasks (SPEC §6) generated on the fly from a seed; see ``experiments.tasks``."""
