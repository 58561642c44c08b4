"""Group-level options of ``neurossm-app`` (training, cross-validation, explanations)."""

from __future__ import annotations

import argparse


def add_group_options(parser: argparse.ArgumentParser) -> None:
    """Add the "Group level" option groups to ``parser``."""
    group = parser.add_argument_group("Group level: model and training")
    group.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where NeuroSSM trains; auto picks cuda when a GPU is visible",
    )
