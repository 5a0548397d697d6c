"""Adapters that let other training frameworks report to a speechtune tuner.

Each submodule imports its framework when it is itself imported (never from ``import
speechtune``) and uses only :mod:`speechtune._report_file` from speechtune, so a training script
pays for nothing else. :mod:`speechtune.integrations.huggingface`: ``SpeechtuneCallback`` for the
Hugging Face ``Trainer``.
"""
