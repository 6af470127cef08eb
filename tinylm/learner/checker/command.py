"""``tinylm check-attention path/to/file.py:ClassName [key=value ...]``: print the checklist of a
learner's attention class; exit 0 when every line holds, 1 when one does not, 2 when the file
or class cannot be used."""

from __future__ import annotations

import dataclasses

from tinylm.command_configs import CheckAttentionConfig
from tinylm.learner.adapter import Settings
from tinylm.learner.checker.checklist import check_target


def run(config: CheckAttentionConfig) -> None:
    """Load, build and check the class ``config.attention`` names, and print the checklist."""
    mapping = {role: name for role, name in dataclasses.asdict(config.map).items() if name}
    report, _ = check_target(config.attention, config.d_model, config.heads, config.kwargs, mapping or None,
                             settings=Settings(config.d_model, config.heads, config.block_size))
    print(f"checking {config.attention}: {report}")
    raise SystemExit(0 if report.ok else 1)
