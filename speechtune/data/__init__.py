"""Speech data: manifests, corpus importers, the synthetic corpus, splits, validation, tokenizers."""

from speechtune._lazy import lazy_exports

_LAZY = {
    "synthesize_configured": "._prepare",
    "corpus_charset": "._prepare",
    "replace_utt": "._manifest",
    "guard_from_env": "._guard",
    "guard_env": "._guard",
    "golden_guard": "._guard",
    "GoldenSetAccessError": "._guard",
    "AN4Error": "._an4",
    "FSDDError": "._fsdd",
    "import_fsdd": "._fsdd",
    "AudioInfo": "._audio",
    "ManifestFormatError": "._importers",
    "normalize_text": "._text",
    "DEFAULT_CHARSET": "._text",
    "import_an4": "._an4",
    "AudioError": "._audio",
    "audio_info": "._audio",
    "load_audio": "._audio",
    "export_lhotse": "._export",
    "import_corpus": "._importers",
    "load_manifest": "._importers",
    "Manifest": "._manifest",
    "TestSplitError": "._manifest",
    "Utterance": "._manifest",
    "require_tunable": "._manifest",
    "PreparedData": "._prepare",
    "prepare_data": "._prepare",
    "refuse_held_out_path": "._prepare",
    "proxy_subset": "._splits",
    "split_dev": "._splits",
    "synthesize_corpus": "._synthetic",
    "spoken_form": "._synthetic",
    "text_to_phonemes": "._espeak",
    "Tokenizer": "._tokenizer",
    "build_tokenizer": "._tokenizer",
    "tokenizer_from_dict": "._tokenizer",
    "BadInputError": "._validate",
    "BadUtterance": "._validate",
    "DEFAULT_MAX_DURATION": "._validate",
    "SKIPPED_FILE": "._validate",
    "ValidationReport": "._validate",
    "validate_manifest": "._validate",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
