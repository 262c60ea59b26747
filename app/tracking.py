"""Optional experiment tracking of ``trivhmc train`` with MLflow (the ``tracking`` extra).

Off unless a tracking URI is given: the deck's ``train.tracking``, else
``$MLFLOW_TRACKING_URI``. Then the world root opens one MLflow run (experiment
``$MLFLOW_EXPERIMENT_NAME`` or ``trivhmc``, run name = the model name), logs the training
settings and theory couplings as parameters and every training step's metrics (``loss``,
``ess``, ... at ``step`` = the step index), and after the save logs the registry version
(``card.json`` and ``model.pt``) as the run's ``model`` artifacts and registers them as a new
version of the MLflow registered model of the same name, tagged with the trivhmc reference,
content hash, theory, lattice, couplings and tags. The trivhmc registry stays the source of
truth; MLflow is a view of it.

Tracking never stops training: an MLflow failure (server unreachable, bad URI) is one warning
and tracking is off for the rest of the run. A URI given while mlflow is not installed is an
error before training starts (:class:`MissingDependency`, exit 6). MLflow 3 refuses a plain
``file:`` store unless ``MLFLOW_ALLOW_FILE_STORE=true``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

from .errors import MissingDependency


def tracking_uri(configured: str | None) -> str | None:
    """The deck's ``train.tracking``, else ``$MLFLOW_TRACKING_URI``, else ``None`` (off)."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or None


class Tracker:
    """One MLflow run for one training; a no-op when off or on ranks other than the root."""

    def __init__(self, uri: str | None, active: bool) -> None:
        """``uri`` None: off. ``active``: this process logs (the world root)."""
        if uri is not None and importlib.util.find_spec("mlflow") is None:
            raise MissingDependency("mlflow", "tracking", "train.tracking / MLFLOW_TRACKING_URI")
        self.uri = uri
        self.on = uri is not None and active
        self.run = None
        self.step = 0

    def _fail(self, what: str, exc: Exception) -> None:
        warnings.warn(f"MLflow tracking off ({what} failed: {exc})", stacklevel=3)
        self.close(failed=True)
        self.on = False

    def start(self, name: str, params: dict[str, Any]) -> None:
        """Open the run and log ``params`` (non-scalar values as JSON)."""
        if not self.on:
            return
        try:
            import mlflow

            mlflow.set_tracking_uri(self.uri)
            mlflow.set_registry_uri(self.uri)
            mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "trivhmc"))
            self.run = mlflow.start_run(run_name=name)
            flat = {
                k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
                for k, v in params.items()
            }
            mlflow.log_params(flat)
        except Exception as exc:  # noqa: BLE001 - tracking never stops training
            self._fail("start", exc)

    def log_step(self, metrics: dict[str, Any]) -> None:
        """Log one training step's numeric metrics at the next step index."""
        if not self.on:
            return
        values = {
            k: float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
        try:
            import mlflow

            mlflow.log_metrics(values, step=self.step)
        except Exception as exc:  # noqa: BLE001
            self._fail("log_metrics", exc)
        self.step += 1

    def finish(self, ref: str, version_path: Path, card: dict[str, Any]) -> None:
        """Log the saved registry version as artifacts, register it, end the run."""
        if not self.on or self.run is None:
            return
        try:
            import mlflow
            from mlflow import MlflowClient

            files = [version_path] if version_path.is_file() else sorted(version_path.iterdir())
            for f in files:
                mlflow.log_artifact(str(f), artifact_path="model")
            name = str(card["name"])
            tags = {
                "trivhmc.ref": ref,
                "trivhmc.hash": str(card["hash"]),
                "theory": str(card["theory"]),
                "lattice": "x".join(str(v) for v in card["lattice"]),
                "couplings": json.dumps(card["couplings"], sort_keys=True),
                "tags": ",".join(card.get("tags") or []),
            }
            mlflow.set_tags(tags)
            client = MlflowClient()
            if not client.search_registered_models(filter_string=f"name='{name}'"):
                client.create_registered_model(name)
            client.create_model_version(
                name,
                source=f"{self.run.info.artifact_uri}/model",
                run_id=self.run.info.run_id,
                tags=tags,
                description=str(card.get("description") or ref),
            )
        except Exception as exc:  # noqa: BLE001
            self._fail("model registration", exc)
            return
        self.close()

    def close(self, failed: bool = False) -> None:
        """End the run (``FAILED`` if training did not finish); idempotent."""
        if self.run is None:
            return
        try:
            import mlflow

            mlflow.end_run(status="FAILED" if failed else "FINISHED")
        except Exception:  # noqa: BLE001, S110
            pass
        self.run = None
