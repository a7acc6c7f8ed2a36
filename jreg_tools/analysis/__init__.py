"""Measure the jump of a model: layer profiles, early-exit and skip-block losses, plots.

Submodules are imported on use; ``plots`` needs only matplotlib.
"""
