"""The tuning YAML: load, compose and validate it into a typed :class:`TuningSpec`.

Every problem in a file (and in the presets and base recipe it names) is reported at once, with
its dotted key, the rule it breaks and the value received.
"""

from speechtune.tuning.spec._build import build_spec, fidelity_spec
from speechtune.tuning.spec._checks import (
    checked_entries,
    close_matches,
    is_int,
    is_num,
)
from speechtune.tuning.spec._compose import PRESET_DIR, available_presets
from speechtune.tuning.spec._fidelity import FidelitySpec
from speechtune.tuning.spec._load import TuningSpec, load_tuning, validate_tuning
from speechtune.tuning.spec._ray import RaySpec, valid_address
from speechtune.tuning.spec._sections import CommandSpec, ObjectiveSpec, StudySpec

__all__ = [
    "PRESET_DIR",
    "CommandSpec",
    "FidelitySpec",
    "ObjectiveSpec",
    "RaySpec",
    "StudySpec",
    "TuningSpec",
    "available_presets",
    "build_spec",
    "checked_entries",
    "close_matches",
    "fidelity_spec",
    "is_int",
    "is_num",
    "load_tuning",
    "valid_address",
    "validate_tuning",
]
