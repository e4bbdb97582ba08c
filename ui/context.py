"""Everything the tabs share, made once by ``build_demo()``: models, label store, training, roles and settings.

Plain Python (no gradio) so it can be built and inspected in tests. Per-user values live in ``gr.State``
inside the tabs, never here.

Roles: admins may train, push, delete, edit guidelines, generate pairs and load models; everybody else labels.
A run on your own machine with no sign-in at all (no ``--auth``, no ``--admins``, no share link, not a Space)
treats its single user as admin. Anywhere else only named admins are admins: ``--admins``, or the Space's
owner signing in with Hugging Face.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignment.limits import UserLimiter
from alignment.registry import ModelRegistry

# What a tab's build() may return: a function and its output components, run when the tab is opened so that
# what can change at run time (the loaded adapters) is current.
TabRefresh = tuple[Callable[[], Any], list[Any]] | None


@dataclass
class AppContext:
    registry: ModelRegistry
    data_dir: Path
    runs_dir: Path = field(default_factory=lambda: Path("runs"))
    admins: frozenset[str] = frozenset()
    auth_enabled: bool = False
    share: bool = False
    on_space: bool = field(default_factory=lambda: bool(os.environ.get("SPACE_ID")))
    label_k: int = 1
    hub_repo: str | None = None
    _store: Any = field(default=None, repr=False)
    _training: Any = field(default=None, repr=False)
    services: dict[str, Any] = field(default_factory=dict, repr=False)  # e.g. the Hub label sync
    limiter: UserLimiter = field(default_factory=UserLimiter, repr=False)  # long requests per user at once

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        self.runs_dir = Path(self.runs_dir)
        owner = os.environ.get("SPACE_AUTHOR_NAME")
        if self.on_space and owner:
            self.admins = frozenset({*self.admins, owner})

    @property
    def local_single_user(self) -> bool:
        return not (self.auth_enabled or self.admins or self.share or self.on_space)

    def is_admin(self, user: str | None) -> bool:
        if self.local_single_user:
            return True
        return user is not None and user in self.admins

    @property
    def store(self):
        """The label store in the data dir, opened on first use."""
        if self._store is None:
            from labeling.store import LabelStore

            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._store = LabelStore(self.data_dir, k=self.label_k)
        return self._store

    @property
    def training(self):
        """The one training manager of this app (one run at a time)."""
        if self._training is None:
            from alignment.training_run import TrainingManager

            self._training = TrainingManager()
        return self._training
