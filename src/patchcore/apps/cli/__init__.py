"""The `patchcore` command line, one module per command group: fitting and updating (`fit`), predicting and
monitoring (`predict`), evaluation, experiments, datasets and the demo (`evaluate`), serving and managing saved
models (`manage`); what they share is in `common`."""

from patchcore.apps.cli.common import main
from patchcore.apps.cli import evaluate, fit, manage, predict  # noqa: F401  (registers the commands)

__all__ = ["main"]
