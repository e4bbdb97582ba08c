"""Everything the tabs share, made once by ``build_demo()``: the model registry, the data folder and settings.

Plain Python (no gradio) so it can be built and inspected in tests. Per-user values live in ``gr.State``
inside the tabs, never here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from alignment.registry import ModelRegistry


@dataclass
class AppContext:
    registry: ModelRegistry
    data_dir: Path
    runs_dir: Path = field(default_factory=lambda: Path("runs"))
    admins: frozenset[str] = frozenset()
    auth_enabled: bool = False
    share: bool = False

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        self.runs_dir = Path(self.runs_dir)
