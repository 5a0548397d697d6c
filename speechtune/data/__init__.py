"""Speech data: manifests, corpus importers, the synthetic corpus, splits, validation, tokenizers."""

# Imported lazily (PEP 562) so that `import speechtune.<part>` stays light and parts can be
# used on their own (a training script that only needs the reporter does not import torch).
from importlib import import_module as _import_module
from typing import Any as _Any

_LAZY = {
    'AN4Error': '._an4',
    'AudioInfo': '._audio',
    'ManifestFormatError': '._importers',
    'normalize_text': '._text',
    'DEFAULT_CHARSET': '._text',
    'import_an4': '._an4',
    'AudioError': '._audio',
    'audio_info': '._audio',
    'load_audio': '._audio',
    'export_lhotse': '._importers',
    'import_corpus': '._importers',
    'load_manifest': '._importers',
    'Manifest': '._manifest',
    'TestSplitError': '._manifest',
    'Utterance': '._manifest',
    'require_tunable': '._manifest',
    'PreparedData': '._prepare',
    'prepare_data': '._prepare',
    'refuse_held_out_path': '._prepare',
    'proxy_subset': '._splits',
    'split_dev': '._splits',
    'synthesize_corpus': '._synthetic',
    'Tokenizer': '._tokenizer',
    'build_tokenizer': '._tokenizer',
    'tokenizer_from_dict': '._tokenizer',
    'BadInputError': '._validate',
    'BadUtterance': '._validate',
    'ValidationReport': '._validate',
    'validate_manifest': '._validate',
}

__all__ = [
    "AN4Error",
    "AudioInfo",
    "ManifestFormatError",
    "normalize_text",
    "DEFAULT_CHARSET",
    "AudioError",
    "BadInputError",
    "BadUtterance",
    "Manifest",
    "PreparedData",
    "TestSplitError",
    "Tokenizer",
    "Utterance",
    "ValidationReport",
    "audio_info",
    "build_tokenizer",
    "export_lhotse",
    "import_an4",
    "import_corpus",
    "load_audio",
    "load_manifest",
    "prepare_data",
    "proxy_subset",
    "refuse_held_out_path",
    "require_tunable",
    "split_dev",
    "synthesize_corpus",
    "tokenizer_from_dict",
    "validate_manifest",
]


def __getattr__(name: str) -> _Any:
    if name in _LAZY:
        value = getattr(_import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
