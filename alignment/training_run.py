"""Background DPO runs for the app: one run at a time, live status for charts, cancel within one step.

The app creates one :class:`TrainingManager` (never a module global) and calls ``start(config)``,
``status()`` from a timer, ``cancel()``, and ``list_adapters("runs")`` to offer finished adapters.
Everything runs through :func:`alignment.train.train`, the same function as ``python -m alignment.train``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alignment.settings import SettingsError
from alignment.train import TrainingError, TrainResult, train
from alignment.train_config import TrainConfig

STATES = ("idle", "running", "cancelling", "finished", "failed", "cancelled")
_HISTORY_LIMIT = 20000


class RunBusy(RuntimeError):
    """A run is already in progress; the message says which and how far it is."""


class TrainingManager:
    """Runs train() on a background thread; all public methods are thread-safe."""

    def __init__(self, train_fn: Callable[..., TrainResult] = train) -> None:
        self._train_fn = train_fn
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reset(None)

    def _reset(self, config: TrainConfig | None) -> None:
        self._state = "idle" if config is None else "running"
        self._config = config
        self._phase = ""
        self._step = 0
        self._max_steps = 0
        self._epoch = 0.0
        self._started = time.time() if config else None
        self._finished: float | None = None
        self._eta: float | None = None
        self._last: dict[str, Any] = {}
        self._history: list[dict[str, Any]] = []
        self._error: str | None = None
        self._result: TrainResult | None = None

    # --- control ------------------------------------------------------------------------------------------

    def start(self, config: TrainConfig, memory_budget: int | str | None = None, force: bool = False,
              resume: bool = True) -> None:
        """Start a run in the background. Raises RunBusy when one is running."""
        if not isinstance(config, TrainConfig):
            raise SettingsError("start() needs a TrainConfig.")
        with self._lock:
            if self._state in ("running", "cancelling"):
                name = self._config.run_name if self._config else "?"
                where = f"step {self._step}/{self._max_steps}" if self._max_steps else (self._phase or "starting")
                raise RunBusy(f"run {name} is at {where}; cancel it or wait for it to finish before starting another.")
            self._reset(config)
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, args=(config, memory_budget, force, resume),
                                            name=f"train-{config.run_name}", daemon=True)
            self._thread.start()

    def cancel(self) -> bool:
        """Ask the run to stop after the current step (a checkpoint is saved so it can resume)."""
        with self._lock:
            if self._state != "running":
                return False
            self._state = "cancelling"
            self._stop.set()
            return True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the current run ends (for scripts and tests). True when no run is active."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return thread is None or not thread.is_alive()

    # --- the worker ---------------------------------------------------------------------------------------

    def _run(self, config: TrainConfig, memory_budget: Any, force: bool, resume: bool) -> None:
        try:
            result = self._train_fn(config, on_log=self._on_log, should_stop=self._stop.is_set, resume=resume,
                                    memory_budget=memory_budget, force=force, on_status=self._on_status)
        except (TrainingError, SettingsError) as exc:
            self._end("failed", error=str(exc))
        except Exception as exc:  # the UI must show something, never a dead thread
            self._end("failed", error=f"Training failed unexpectedly: {type(exc).__name__}: {exc}")
        else:
            self._end("cancelled" if result.state == "cancelled" else "finished", result=result)

    def _end(self, state: str, error: str | None = None, result: TrainResult | None = None) -> None:
        with self._lock:
            self._state = state
            self._error = error
            self._result = result
            self._finished = time.time()
            self._eta = 0.0 if state == "finished" else None
            if result is not None:
                self._step, self._max_steps = result.global_step, result.max_steps

    def _on_status(self, phase: str) -> None:
        with self._lock:
            self._phase = phase

    def _on_log(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._step = int(record.get("step", self._step))
            self._max_steps = int(record.get("max_steps", self._max_steps))
            if isinstance(record.get("epoch"), (int, float)):
                self._epoch = float(record["epoch"])
            self._eta = record.get("eta")
            self._last.update(record)  # the end-of-run summary line must not hide the last loss and rewards
            if len(self._history) < _HISTORY_LIMIT:
                self._history.append(dict(record))

    # --- reading ------------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        with self._lock:
            now = self._finished or time.time()
            config = self._config
            return {
                "state": self._state,
                "run_name": config.run_name if config else None,
                "phase": self._phase,
                "step": self._step,
                "max_steps": self._max_steps,
                "epoch": self._epoch,
                "elapsed": round(now - self._started, 1) if self._started else 0.0,
                "eta": self._eta,
                "last_metrics": dict(self._last),
                "history": [dict(r) for r in self._history],
                "error": self._error,
                "output_dir": config.output_dir if config else None,
                "adapter_dir": self._result.adapter_dir if self._result else None,
                "gate": self._result.gate if self._result else None,
                "gate_note": self._result.gate_note if self._result else "",
            }

    def list_adapters(self, runs_dir: str | Path = "runs") -> list[dict[str, Any]]:
        return list_adapters(runs_dir)

    def is_running(self) -> bool:
        with self._lock:
            return self._state in ("running", "cancelling")


def list_adapters(runs_dir: str | Path = "runs") -> list[dict[str, Any]]:
    """Finished runs under ``runs_dir``: adapter folder, base model and final metrics, newest first."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    found = []
    for summary_path in root.glob("*/adapter/training_summary.json"):
        adapter = summary_path.parent
        if not (adapter / "adapter_config.json").is_file():
            continue
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue  # a half-written or hand-edited summary should not hide the other runs
        found.append({
            "run_name": summary.get("run_name", adapter.parent.name),
            "adapter_dir": str(adapter),
            "base_model": summary.get("base_model"),
            "dataset": summary.get("dataset"),
            "global_step": summary.get("global_step"),
            "metrics": summary.get("metrics", {}),
            "eval_metrics": summary.get("eval_metrics", {}),
            "modified": summary_path.stat().st_mtime,
        })
    return sorted(found, key=lambda item: item["modified"], reverse=True)
