"""A trained speech recogniser: front end + normalisation + model + tokenizer, saved as one file.

This is what ``speechtune train`` produces (``model.pt``) and what ``evaluate`` and
``transcribe`` load. The file holds tensors and plain values only, so it loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from speechtune.config import (
    ConfigError,
    DecodeConfig,
    RecipeConfig,
    config_from_dict,
    config_to_dict,
)
from speechtune.data import Tokenizer, tokenizer_from_dict
from speechtune.features import GlobalCMVN, build_frontend
from speechtune.inference._int4 import INT4_STAGE, quantize_weight_int4
from speechtune.inference._quantize import quiet_quantization_warnings, restore_quantized
from speechtune.inference._sparse_store import decode_payload, encode_payload
from speechtune.models import ASRModel, build_model

FORMAT_VERSION = 1

#: What every refusal of a model file ends with.
EXPECTED_MODEL = "(expected a speechtune model.pt written by train/tune)"

_PAYLOAD_KEYS = ("format_version", "config", "tokenizer", "model")


def resolve_model_file(path: str | Path) -> Path:
    """The ``model.pt`` that ``path`` names: the file itself, or the one in a run directory.

    Raises:
        FileNotFoundError: nothing at ``path``, or a directory without a ``model.pt``.
    """
    path = Path(path)
    if path.is_dir():
        if (path / "model.pt").is_file():
            return path / "model.pt"
        raise FileNotFoundError(
            f"model file {path}: is a directory without a model.pt {EXPECTED_MODEL}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"model file {path}: not found {EXPECTED_MODEL}")
    return path


def _unreadable(path: Path, exc: BaseException) -> str:
    """Why ``torch.load`` failed on ``path``, told from the file's first bytes."""
    with path.open("rb") as fh:
        head = fh.read(512)
    if not head:
        return "is empty (0 bytes)"
    if head.startswith(b"PK\x03\x04"):  # torch.save writes a zip archive
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        return f"is a damaged or truncated torch file ({first[:120]})"
    if head.startswith(b"\x80"):  # a pickle's protocol opcode
        return (
            "is a Python pickle, not a torch file of tensors and plain values (it is refused "
            "unread: loading arbitrary pickles can run code)"
        )
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "is not a torch file (unrecognised binary content)"
    return "is a text file, not a torch file" if b"\x00" not in head else "is not a torch file"


def read_model_payload(path: str | Path) -> dict[str, Any]:
    """The contents of a ``model.pt`` (``torch.load(weights_only=True)``: no code runs).

    Raises:
        FileNotFoundError: see :func:`resolve_model_file`.
        ValueError: one line naming the file and what is wrong with it: empty, not a torch
            file, damaged, or a torch file that holds something other than a speechtune model.
    """
    path = resolve_model_file(path)
    try:
        # quiet: torch's own rebuilding of an int8 model's quantised tensors warns about its API.
        with warnings.catch_warnings(), quiet_quantization_warnings():
            # A foreign pickle makes torch warn about its protocol before the error said below.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    # torch.load fails on a foreign file with EOFError, KeyError, UnpicklingError, RuntimeError..:
    # which one says little, so the reason is told from the file's first bytes.
    except Exception as exc:
        raise ValueError(f"model file {path}: {_unreadable(path, exc)} {EXPECTED_MODEL}") from exc
    if not isinstance(payload, dict):
        raise ValueError(
            f"model file {path}: holds a {type(payload).__name__}, not a speechtune model "
            f"{EXPECTED_MODEL}"
        )
    missing = [k for k in _PAYLOAD_KEYS if k not in payload]
    if missing:
        hint = (
            " (a last.pt training checkpoint? use the model.pt beside it)"
            if "optimizer" in payload
            else ""
        )
        raise ValueError(
            f"model file {path}: holds a dict without the key(s) {', '.join(missing)} of a "
            f"speechtune model{hint} {EXPECTED_MODEL}"
        )
    try:
        # edge.sparse_storage: pruned weights come back dense, so no reader sees the encoding.
        return decode_payload(payload)
    except ValueError as exc:
        raise ValueError(f"model file {path}: {exc} {EXPECTED_MODEL}") from exc


def pad_waves(
    waves: Sequence[np.ndarray], device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack mono waveforms into a zero-padded batch on ``device``."""
    lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
    batch = torch.zeros(len(waves), int(lengths.max()) if len(waves) else 0)
    for i, w in enumerate(waves):
        batch[i, : len(w)] = torch.from_numpy(np.asarray(w, dtype=np.float32))
    return batch.to(device), lengths.to(device)


def _quantized_structure(
    model: ASRModel, cfg: RecipeConfig, stage: str, device: torch.device | str
) -> ASRModel:
    """The module structure of a quantised model file, ready for its state dict."""
    if stage == INT4_STAGE:
        # Dequantised to float in each forward: runs on any device.
        if cfg.edge.quantize != "weight_int4":
            raise ValueError(
                f"an int4 model file needs edge.quantize=weight_int4, not {cfg.edge.quantize!r}"
            )
        quantize_weight_int4(model, cfg.edge.int4_group_size)
        return model
    if stage == "int8" and torch.device(device).type != "cpu":
        # int8 kernels (fbgemm/x86, qnnpack) exist on the CPU only.
        warnings.warn(
            f"an int8 model runs on the CPU; device={str(device)!r} is ignored",
            UserWarning,
            stacklevel=3,
        )
    restore_quantized(model, cfg.edge.quantize, cfg.edge.observer, stage)  # in place
    return model


class Recognizer(nn.Module):
    """Waveforms in, transcripts out.

    Args:
        cfg: the recipe config the model was trained with.
        tokenizer: maps token ids to text.
        cmvn: global mean/variance normalisation fitted on the training features (or None).
        model: the acoustic model.
        quantization: ``None`` for a float model, ``"qat"`` for one fake-quantised for
            ``edge.quantize: qat_int8``, ``"int8"`` for a quantised one (see ``_quantize``),
            ``"int4"`` for ``weight_int4`` (see ``_int4``).
    """

    def __init__(
        self,
        cfg: RecipeConfig,
        tokenizer: Tokenizer,
        cmvn: GlobalCMVN | None,
        model: ASRModel,
        quantization: str | None = None,
    ):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.frontend = build_frontend(cfg.features)
        self.cmvn = cmvn
        self.model = model
        self.quantization = quantization

    @property
    def device(self) -> torch.device:
        # An int8 model may hold no Parameter at all (its layers keep packed int8 weights).
        tensor: torch.Tensor | None = next(self.model.parameters(), None)
        if tensor is None:
            tensor = next(self.model.buffers(), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    def normalize(self, feats: torch.Tensor) -> torch.Tensor:
        return self.cmvn(feats) if self.cmvn is not None else feats

    @torch.no_grad()
    def decode_features(
        self, feats: torch.Tensor, lengths: torch.Tensor, decode: DecodeConfig | None = None
    ) -> list[str]:
        """Decode a padded batch of (un-normalised) log-mel features into text."""
        d = decode or self.cfg.decode
        ids = self.model.decode(
            self.normalize(feats),
            lengths,
            method=d.method,
            beam_size=d.beam_size,
            ctc_weight=d.ctc_weight,
            max_len_ratio=d.max_len_ratio,
        )
        return [self.tokenizer.decode(x) for x in ids]

    @torch.no_grad()
    def transcribe(
        self, waves: Sequence[np.ndarray], decode: DecodeConfig | None = None, batch_size: int = 16
    ) -> list[str]:
        """Transcribe mono float32 waveforms sampled at ``cfg.features.sample_rate``."""
        was_training = self.training
        self.eval()
        out: list[str] = []
        try:
            # Sort by length so batches pad little; restore the caller's order at the end.
            order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
            texts: dict[int, str] = {}
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                wav, lens = pad_waves([waves[i] for i in idx], self.device)
                feats, flens = self.frontend(wav, lens)
                for i, t in zip(idx, self.decode_features(feats, flens, decode)):
                    texts[i] = t
            out = [texts[i] for i in range(len(waves))]
        finally:
            self.train(was_training)
        return out

    # -- persistence -------------------------------------------------------------------------
    def to_payload(
        self, sparse: bool | None = None, state: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """What ``model.pt`` holds: tensors and plain values.

        Args:
            sparse: store mostly-zero weights as bitmask + values (``_sparse_store``); None
                follows the config (``edge.sparse_storage`` with ``edge.prune_sparsity > 0``).
            state: the model's state dict to store (default ``self.model.state_dict()``; e.g.
                one with LoRA adapters merged into the weights).
        """
        if sparse is None:
            sparse = self.cfg.edge.sparse_storage and self.cfg.edge.prune_sparsity > 0
        payload: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "config": config_to_dict(self.cfg),
            "tokenizer": self.tokenizer.to_dict(),
            "model": self.model.state_dict() if state is None else state,
            "cmvn": self.cmvn.state_dict() if self.cmvn is not None else None,
        }
        if self.quantization is not None:
            payload["quantization"] = self.quantization
        encoder_config = self.model.encoder_config()
        if encoder_config is not None:  # a pretrained encoder's (hf_wav2vec2) JSON config
            payload["encoder_config"] = encoder_config
        return encode_payload(payload) if sparse else payload

    @classmethod
    def from_payload(
        cls, payload: dict[str, Any], device: torch.device | str = "cpu"
    ) -> Recognizer:
        if payload.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"unsupported model file format {payload.get('format_version')!r}; expected {FORMAT_VERSION}"
            )
        payload = decode_payload(payload)  # a no-op for one read_model_payload gave
        cfg = config_from_dict(payload["config"])
        tokenizer = tokenizer_from_dict(payload["tokenizer"])
        model = build_model(
            cfg.model,
            cfg.features.n_mels,
            tokenizer.vocab_size,
            cfg.features.hop_ms,
            payload.get("encoder_config"),  # rebuilds hf_wav2vec2 without its directory
        )
        stage = payload.get("quantization")
        if stage is not None:
            model = _quantized_structure(model, cfg, stage, device)
            if stage == "int8":
                device = "cpu"
        model.load_state_dict(payload["model"])
        cmvn = None
        if payload.get("cmvn") is not None:
            cmvn = GlobalCMVN(cfg.features.n_mels)
            cmvn.load_state_dict(payload["cmvn"])
        return cls(cfg, tokenizer, cmvn, model, stage).to(device).eval()

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> Recognizer:
        """Load a ``model.pt`` written by ``speechtune train`` (safe: weights_only).

        Args:
            path: the ``model.pt``, or a run directory that holds one.
            device: where the model runs.

        Raises:
            FileNotFoundError: no such file, or a directory without a ``model.pt``.
            ValueError: the file is not a speechtune model, or its config, tokenizer and
                weights do not fit together (one line naming the file).
        """
        path = resolve_model_file(path)
        payload = read_model_payload(path)
        try:
            return cls.from_payload(payload, device)
        except ConfigError as exc:
            problem = exc.problems[0] if exc.problems else exc
            raise ValueError(
                f"model file {path}: its config is not valid ({problem}) {EXPECTED_MODEL}"
            ) from exc
        except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as exc:
            # e.g. load_state_dict's size mismatches: many lines, the first says what.
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise ValueError(
                f"model file {path}: does not load as a speechtune model ({first[:200]}) "
                f"{EXPECTED_MODEL}"
            ) from exc
