"""Text-to-speech: a FastSpeech-style multi-speaker recipe, its vocoders, metrics and staged tuning.

* :func:`train_tts` trains the recipe of a :class:`TTSConfig` (``conf/tts_synthetic.yaml``) and
  writes ``model.pt``; :class:`Synthesizer` loads it and speaks.
* :class:`GriffinLim` and :class:`NeuralVocoder` turn log-mels into audio.
* :func:`mel_cepstral_distortion` and :func:`intelligibility` judge the audio.
* :func:`run_staged` tunes in stages (acoustic model with the vocoder frozen, then the vocoder
  with the acoustic model frozen), or jointly for comparison.

Exports are lazy: these modules import torch.
"""

from speechtune._lazy import lazy_exports

_LAZY = {
    "TTSConfig": "._config",
    "load_tts_config": "._config",
    "tts_config_from_dict": "._config",
    "tts_config_to_dict": "._config",
    "TokenTable": "._text",
    "text_symbols": "._text",
    "monotonic_alignment": "._align",
    "FastSpeech": "._model",
    "GriffinLim": "._vocoder",
    "NeuralVocoder": "._vocoder",
    "spectral_convergence": "._vocoder",
    "mel_cepstral_distortion": "._metrics",
    "intelligibility": "._metrics",
    "prepare_tts_data": "._data",
    "Synthesizer": "._synth",
    "TTSResult": "._train",
    "train_tts": "._train",
    "train_vocoder": "._train",
    "StagedSpec": "._staged",
    "load_staged": "._staged",
    "run_staged": "._staged",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
