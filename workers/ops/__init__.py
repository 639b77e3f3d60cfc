"""Operator commands behind the `betstream` CLI: archive, reconcile, load, and the
whole-pipeline demo (`make run`)."""
