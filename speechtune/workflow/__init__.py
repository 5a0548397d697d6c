"""The production workflow: proxy data, baseline, coarse and fine search, multi-seed validation,
full training, gating on a golden set against the registry's champion, and export.

``speechtune workflow --config conf/workflow.yaml`` runs it; :func:`run_workflow` is the same
from Python.
"""

from speechtune._lazy import lazy_exports

_LAZY = {
    "STAGES": "._config",
    "WorkflowSpec": "._config",
    "load_workflow": "._config",
    "stage_index": "._config",
    "GoldenSetAccessError": "._golden",
    "StageRecord": "._state",
    "WorkflowRecord": "._state",
    "WorkflowState": "._state",
    "WorkflowError": "._context",
    "WorkflowConfigChanged": "._runner",
    "run_workflow": "._runner",
    "summary": "._runner",
    "wer_path": "._report",
    "write_workflow_report": "._report",
}

__all__ = list(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
