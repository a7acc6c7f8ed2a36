"""Several runs' validation reports side by side (the study and the demo).

A report is the dict ``cli.py validate`` writes to ``validation_profile.json``
(see ``jreg_lightning.profile_report``): ``profile`` (Psi per block),
``jump_strength``, ``jump_strength_late``, ``jump_layer``, ``loss``, ...
"""

from __future__ import annotations


def format_side_by_side(reports: dict[str, dict]) -> str:
    """Several runs' profiles in columns, then J, J_late, the argmax block and the loss.

    Args:
        reports: run label -> report (the dict described in the module docstring).
    """
    names = list(reports)
    width = max(14, *(len(name) + 2 for name in names))
    head = f"{'block':<8}" + "".join(f"{name:>{width}}" for name in names)
    lines = ["Psi per block (final state: post-norm unless a run says otherwise)", head]
    layers = max(len(report["profile"]) for report in reports.values())
    for index in range(layers):
        cells = "".join(
            f"{report['profile'][index]:>{width}.5f}"
            if index < len(report["profile"])
            else " " * width
            for report in reports.values()
        )
        lines.append(f"{index + 1:<8d}{cells}")
    rows = (
        ("J", "jump_strength", ".3f"),
        ("J_late", "jump_strength_late", ".3f"),
        ("argmax", "jump_layer", "d"),
        ("val loss", "loss", ".4f"),
    )
    for label, key, spec in rows:
        lines.append(
            f"{label:<8}" + "".join(f"{report[key]:>{width}{spec}}" for report in reports.values())
        )
    lines.append("J = Psi_L / mean(Psi_2..Psi_{L-1}); J = 1 means no jump.")
    return "\n".join(lines)
