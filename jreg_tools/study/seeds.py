"""Seeds of one setting: which runs pool together, their mean and spread, and what beats noise.

Runs are seeds of one setting when they have the same JREG settings and the
same fit-config overrides and differ only in ``seed`` (``baseline_s1`` ..
``baseline_s3``; ``linear_lam30``, ``linear_lam30_s2``, ``linear_lam30_s3``):
the study file needs no extra key. The baselines are the study's ``baselines``
list. A setting's spread is the half-range of its seeds' values; with fewer
than two seeds it is unknown (NaN), and nothing is called clear or free of
cost against an unknown spread.
"""

from __future__ import annotations

import json
import math

from jreg_tools.study.spec import RunSpec, StudySpec

# A spread needs two values: below this many seeds a setting's spread is unknown.
MIN_SEEDS = 2


def setting_key(run: RunSpec) -> str:
    """The run's settings without its name and seed: equal keys mean seeds of one setting."""
    return json.dumps([run.jreg, run.overrides], sort_keys=True, default=str)


def seed_groups(spec: StudySpec, finished: list[str]) -> dict[str, list[str]]:
    """The finished JREG runs grouped by setting: first run's name -> its finished seeds.

    In the study file's order; the baselines are left out (``spec.baselines`` pools them).
    """
    groups: dict[str, list[str]] = {}
    first: dict[str, str] = {}
    for run in spec.runs:
        if run.is_baseline or run.name not in finished:
            continue
        key = setting_key(run)
        first.setdefault(key, run.name)
        groups.setdefault(first[key], []).append(run.name)
    return groups


def group_of(groups: dict[str, list[str]], name: str) -> str | None:
    """The group (its first run's name) that holds run ``name``, or ``None``."""
    return next((first for first, names in groups.items() if name in names), None)


def seed_stats(metrics: dict[str, dict], names: list[str], keys: tuple[str, ...]) -> dict:
    """``{key: {"mean", "spread", "values"}}`` over the runs ``names``.

    ``spread`` is the half-range of the values, NaN (unknown) below ``MIN_SEEDS`` runs.
    """
    stats = {}
    for key in keys:
        values = [metrics[name][key] for name in names]
        stats[key] = {
            "mean": sum(values) / len(values),
            "spread": (max(values) - min(values)) / 2 if len(values) >= MIN_SEEDS else math.nan,
            "values": values,
        }
    return stats


def noise(reference: dict, other: dict | None = None) -> float:
    """The largest difference two settings' means can have by seed noise alone.

    The reference's spread, plus the other setting's when it has several seeds;
    NaN when the reference's spread is unknown.
    """
    extra = other["spread"] if other is not None and not math.isnan(other["spread"]) else 0.0
    return reference["spread"] + extra


def pooled(names: list[str]) -> bool:
    """Whether these seeds have a spread (at least ``MIN_SEEDS`` of them)."""
    return len(names) >= MIN_SEEDS


def known(value: float) -> bool:
    """A number, not the NaN of an unknown spread."""
    return not math.isnan(value)
