"""The ASR model: subsampling, encoder, CTC head and optional attention decoder."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from speechtune.config import HEADS, ModelConfig
from speechtune.models._beam import beam_search_one
from speechtune.models._conformer import ConformerEncoder
from speechtune.models._ctc import BLANK_ID, CTCHead, ctc_greedy_collapse
from speechtune.models._decoder import TransformerDecoder, attention_loss
from speechtune.models._encoders import PRETRAINED_ENCODERS, build_encoder
from speechtune.models._hf_wav2vec2 import WaveformInput
from speechtune.models._layers import valid_mask
from speechtune.models._streaming import EncoderCache, StreamingSpec, streaming_spec
from speechtune.models._subsampling import Conv2dSubsampling
from speechtune.models._transformer import TransformerEncoder


def _check_inputs(feats: torch.Tensor, feat_lens: torch.Tensor, input_dim: int) -> None:
    if feats.dim() != 3 or feats.size(-1) != input_dim:
        raise ValueError(f"feats must be [B, T, {input_dim}], got {tuple(feats.shape)}")
    if feat_lens.shape != (feats.size(0),):
        raise ValueError(f"feat_lens must be [B]=[{feats.size(0)}], got {tuple(feat_lens.shape)}")


class ASRModel(nn.Module):
    """Encoder with a CTC head, optionally joined with an attention decoder.

    Token ids: 0 is the CTC blank; with the ``ctc_attention`` head ``vocab_size - 1`` is
    sos/eos. Both heads share one output size, ``vocab_size``.

    Args:
        cfg: Model hyperparameters.
        input_dim: Feature dimension ``F``.
        vocab_size: Output classes including blank (and sos/eos).
        streaming: The encoder's chunking (see :func:`build_model`); ``None`` is full context.
        encoder_config: A pretrained encoder's stored config (see :func:`build_model`).
    """

    def __init__(
        self,
        cfg: ModelConfig,
        input_dim: int,
        vocab_size: int,
        streaming: StreamingSpec | None = None,
        encoder_config: str | None = None,
    ) -> None:
        super().__init__()
        if cfg.head not in HEADS:
            raise ValueError(
                f"model.head={cfg.head!r} is not known; expected one of {list(HEADS)}"
            )
        min_vocab = 3 if cfg.head == "ctc_attention" else 2
        if vocab_size < min_vocab:
            raise ValueError(
                f"vocab_size={vocab_size} is too small for head {cfg.head!r}: it needs >= "
                f"{min_vocab} (blank, at least one token{', sos/eos' if min_vocab == 3 else ''})"
            )
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.sos_eos_id = vocab_size - 1
        self.streaming = streaming or StreamingSpec()
        self.subsampling: Conv2dSubsampling
        if cfg.encoder in PRETRAINED_ENCODERS:
            # A pretrained encoder subsamples with its own convolutions (Wav2Vec2's CNN reads
            # [B, T, 1] samples, Whisper's two convolutions its log-mels); model.subsampling
            # does not apply. Typed as the Conv2dSubsampling that streaming and export read
            # (factor, plan): both refuse these encoders before reading it.
            input_dim = 1 if cfg.encoder == "hf_wav2vec2" else input_dim
            self.subsampling = WaveformInput()  # type: ignore[assignment]
        else:
            self.subsampling = Conv2dSubsampling(input_dim, cfg.d_model, cfg.subsampling)
        self.input_dim = input_dim
        self.encoder = build_encoder(cfg, self.streaming, encoder_config)
        self.interctc_taps = interctc_taps(cfg)
        self.ctc = CTCHead(cfg.d_model, vocab_size)
        self.decoder: TransformerDecoder | None = None
        if cfg.head == "ctc_attention":
            self.decoder = TransformerDecoder(
                vocab_size, cfg.d_model, cfg.decoder_layers, cfg.num_heads, cfg.ff_dim, cfg.dropout
            )

    def encoder_config(self) -> str | None:
        """A pretrained encoder's config, for ``model.pt`` to rebuild it (``None`` for the
        encoders the recipe's sizes describe)."""
        config_json = getattr(self.encoder, "config_json", None)
        return config_json() if callable(config_json) else None

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def encode(
        self, feats: torch.Tensor, feat_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Subsample and encode.

        Args:
            feats: ``[B, T, F]`` features.
            feat_lens: ``[B]`` valid frames.

        Returns:
            ``(enc [B, T', d_model], enc_lens [B])``.
        """
        x, lens = self._subsample(feats, feat_lens)
        return self.encoder(x, lens)

    def stream_cache(self, batch: int, device: torch.device | str) -> EncoderCache:
        """The encoder state a stream starts from (see :meth:`encode_chunk`).

        Raises:
            ValueError: The model is full-context (``model.chunk_ms = 0``).
        """
        if not isinstance(self.encoder, ConformerEncoder):
            raise ValueError(f"the {self.cfg.encoder!r} encoder does not stream")
        return self.encoder.init_cache(batch, device)

    def encode_chunk(
        self, frames: torch.Tensor, cache: EncoderCache
    ) -> tuple[torch.Tensor, EncoderCache]:
        """Encode the next chunk of subsampled ``frames [B, Tc, d_model]`` of a stream (eval
        mode); returns its encoder output and the state for the next chunk."""
        if not isinstance(self.encoder, ConformerEncoder):
            raise ValueError(f"the {self.cfg.encoder!r} encoder does not stream")
        return self.encoder.forward_chunk(frames, cache)

    def _subsample(
        self, feats: torch.Tensor, feat_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _check_inputs(feats, feat_lens, self.input_dim)
        return self.subsampling(feats, feat_lens.to(feats.device))

    def _encode_taps(
        self, feats: torch.Tensor, feat_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """:meth:`encode`, plus the tapped blocks' outputs when intermediate CTC is on."""
        if not self.interctc_taps:
            enc, lens = self.encode(feats, feat_lens)
            return enc, lens, []
        x, lens = self._subsample(feats, feat_lens)
        # interctc_taps() is non-empty only for these stacks.
        assert isinstance(self.encoder, (ConformerEncoder, TransformerEncoder))
        return self.encoder.forward_taps(x, lens, self.interctc_taps)

    def _check_targets(self, targets: torch.Tensor, target_lens: torch.Tensor) -> None:
        if targets.dim() != 2 or target_lens.shape != (targets.size(0),):
            raise ValueError(
                f"targets must be [B, U] with target_lens [B], got {tuple(targets.shape)} "
                f"and {tuple(target_lens.shape)}"
            )
        # Valid ids exclude blank and (with an attention decoder) sos/eos.
        high = self.sos_eos_id if self.decoder is not None else self.vocab_size
        inside = valid_mask(target_lens.to(targets.device), targets.size(1))
        bad = inside & ((targets < 1) | (targets >= high))
        if bool(bad.any()):
            b, u = (int(i) for i in torch.nonzero(bad)[0])
            raise ValueError(
                f"target token {int(targets[b, u])} at utterance {b}, position {u} is outside "
                f"[1, {high - 1}] (0 is the blank, {self.sos_eos_id} the sos/eos id)"
            )

    def forward(
        self,
        feats: torch.Tensor,
        feat_lens: torch.Tensor,
        targets: torch.Tensor,
        target_lens: torch.Tensor,
    ) -> dict[str, torch.Tensor | None]:
        """Training losses.

        Args:
            feats: ``[B, T, F]`` features.
            feat_lens: ``[B]`` valid frames.
            targets: ``[B, U]`` token ids padded with -1.
            target_lens: ``[B]`` valid tokens.

        Returns:
            ``{"loss", "ctc_loss", "att_loss", "final_ctc_loss"}`` scalars (``att_loss`` is
            ``None`` for the ``ctc`` head); ``loss = w * ctc + (1 - w) * att`` with
            ``w = cfg.ctc_weight``. With intermediate CTC, ``ctc_loss`` is
            ``(1 - v) * final + v * mean(tapped)`` with ``v = cfg.interctc_weight``.
            ``final_ctc_loss`` is the last layer's CTC loss alone, the one quantity that loss
            weights (``ctc_weight``, ``interctc_weight``) do not rescale: configs that differ
            in them can be compared by it, not by ``loss``.
        """
        self._check_targets(targets, target_lens)
        enc, enc_lens, tapped = self._encode_taps(feats, feat_lens)
        targets = targets.to(enc.device)
        target_lens = target_lens.to(enc.device)
        ctc_loss = final_ctc = self.ctc.loss(enc, enc_lens, targets, target_lens)
        if tapped:
            inter = torch.stack([self.ctc.loss(t, enc_lens, targets, target_lens) for t in tapped])
            v = self.cfg.interctc_weight
            ctc_loss = (1 - v) * ctc_loss + v * inter.mean()
        if self.decoder is None:
            return {
                "loss": ctc_loss,
                "ctc_loss": ctc_loss,
                "att_loss": None,
                "final_ctc_loss": final_ctc,
            }
        att_loss = attention_loss(
            self.decoder,
            enc,
            valid_mask(enc_lens, enc.size(1)),
            targets,
            target_lens,
            self.sos_eos_id,
        )
        w = self.cfg.ctc_weight
        loss = w * ctc_loss + (1 - w) * att_loss
        return {
            "loss": loss,
            "ctc_loss": ctc_loss,
            "att_loss": att_loss,
            "final_ctc_loss": final_ctc,
        }

    @torch.no_grad()
    def ctc_greedy(self, enc: torch.Tensor, enc_lens: torch.Tensor) -> list[list[int]]:
        """Best-path CTC decoding of encoder output (repeats merged, blanks dropped)."""
        log_probs = self.ctc.log_probs(enc)
        if self.decoder is not None:
            # sos/eos shares the CTC output layer but is never a CTC target; never emit it.
            log_probs[..., self.sos_eos_id] = float("-inf")
        return ctc_greedy_collapse(log_probs, enc_lens, blank=BLANK_ID)

    @torch.no_grad()
    def beam_search(
        self,
        enc: torch.Tensor,
        enc_lens: torch.Tensor,
        beam_size: int = 4,
        ctc_weight: float = 0.3,
        max_len_ratio: float = 1.0,
    ) -> list[list[int]]:
        """Joint CTC/attention beam search, one utterance at a time.

        Args:
            enc: ``[B, T', d_model]`` encoder output.
            enc_lens: ``[B]`` valid encoder frames.
            beam_size: Hypotheses kept per step (>= 1).
            ctc_weight: Weight of CTC prefix scores in [0, 1]; 0 is pure attention.
            max_len_ratio: Most output tokens per encoder frame.

        Returns:
            One token-id list per utterance.

        Raises:
            ValueError: The model has no attention decoder, or an argument is out of range.
        """
        if self.decoder is None:
            raise ValueError(
                f"beam search needs model.head='ctc_attention' (this model's head is "
                f"{self.cfg.head!r}); use method='greedy'"
            )
        if beam_size < 1 or not 0.0 <= ctc_weight <= 1.0 or max_len_ratio <= 0:
            raise ValueError(
                f"need beam_size >= 1, 0 <= ctc_weight <= 1, max_len_ratio > 0; got "
                f"{beam_size=}, {ctc_weight=}, {max_len_ratio=}"
            )
        log_probs = self.ctc.log_probs(enc) if ctc_weight > 0 else None
        hyps = []
        for b, length in enumerate(enc_lens.tolist()):
            hyps.append(
                beam_search_one(
                    self.decoder,
                    enc[b, :length],
                    self.sos_eos_id,
                    beam_size,
                    max_len=max(1, int(max_len_ratio * length)),
                    ctc_log_probs=None if log_probs is None else log_probs[b, :length],
                    ctc_weight=ctc_weight,
                    blank=BLANK_ID,
                )
            )
        return hyps

    def decode(
        self,
        feats: torch.Tensor,
        feat_lens: torch.Tensor,
        method: str = "greedy",
        beam_size: int = 4,
        ctc_weight: float = 0.3,
        max_len_ratio: float = 1.0,
    ) -> list[list[int]]:
        """Transcribe features to token ids (in eval mode; the previous mode is restored).

        Args:
            feats: ``[B, T, F]`` features.
            feat_lens: ``[B]`` valid frames.
            method: ``"greedy"`` (CTC best path) or ``"beam"`` (ctc_attention head only).
            beam_size: Beam width for ``"beam"``.
            ctc_weight: CTC prefix-score weight for ``"beam"``.
            max_len_ratio: Most output tokens per encoder frame for ``"beam"``.

        Returns:
            One token-id list per utterance.
        """
        methods: dict[str, Callable[[torch.Tensor, torch.Tensor], list[list[int]]]] = {
            "greedy": self.ctc_greedy,
            "beam": lambda e, n: self.beam_search(e, n, beam_size, ctc_weight, max_len_ratio),
        }
        if method not in methods:
            raise ValueError(
                f"decode method {method!r} is not known; expected one of {list(methods)}"
            )
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                enc, enc_lens = self.encode(feats, feat_lens)
                return methods[method](enc, enc_lens)
        finally:
            self.train(was_training)


def interctc_taps(cfg: ModelConfig) -> tuple[int, ...]:
    """The 1-based encoder blocks whose outputs get an intermediate CTC loss (maybe none).

    Raises:
        ValueError: The named block is not below the last one.
    """
    if cfg.interctc_weight <= 0:
        return ()
    if cfg.encoder not in ("transformer", "conformer"):
        # As for pos_enc: say so once rather than fail a tuner's trial.
        warnings.warn(
            f"model.interctc_weight has no effect on the {cfg.encoder!r} encoder (only "
            "transformer and conformer stacks expose their blocks); training without it",
            stacklevel=3,
        )
        return ()
    layer = cfg.interctc_block
    if not 1 <= layer < cfg.num_layers:
        raise ValueError(
            f"model.interctc_layer={cfg.interctc_layer} must name a block below the last of "
            f"model.num_layers={cfg.num_layers} (1..{cfg.num_layers - 1}, or 0 for the middle)"
        )
    return (layer,)


def build_model(
    cfg: ModelConfig,
    input_dim: int,
    vocab_size: int,
    hop_ms: float | None = None,
    encoder_config: str | None = None,
) -> ASRModel:
    """Build the ASR model a :class:`~speechtune.config.ModelConfig` describes.

    Args:
        cfg: Model hyperparameters.
        input_dim: Feature dimension (e.g. ``features.n_mels``).
        vocab_size: Output classes including blank 0 (and sos/eos = ``vocab_size - 1`` for
            the ``ctc_attention`` head).
        hop_ms: The features' frame shift (``features.hop_ms``): it turns ``model.chunk_ms``
            into encoder frames, so a streaming config needs it.
        encoder_config: For a pretrained encoder (``model.encoder: hf_wav2vec2``), the config
            ``ASRModel.encoder_config()`` gave when the model was saved; ``None`` reads it from
            ``model.init_from``. Its ``input_dim`` is 1 (waveform samples) whatever is passed.

    Returns:
        The model, on the CPU, in training mode.

    Raises:
        ValueError: ``cfg.chunk_ms > 0`` without ``hop_ms``.
    """
    if cfg.chunk_ms > 0 and hop_ms is None:
        raise ValueError(
            f"model.chunk_ms={cfg.chunk_ms:g} needs the features' hop_ms to count its encoder "
            "frames: pass build_model(..., hop_ms=cfg.features.hop_ms)"
        )
    spec = streaming_spec(
        cfg.chunk_ms, cfg.left_chunks, cfg.dynamic_chunk, hop_ms or 0.0, cfg.subsampling
    )
    return ASRModel(cfg, input_dim, vocab_size, spec, encoder_config)
