"""The recipe's typed configuration.

Every tunable knob of the ASR recipe lives here, grouped by concern, with its allowed values.
Runtime options that are *not* hyperparameters (device, output directory, threads) live in
:class:`RunOptions` so that a tuned ``best.yaml`` never carries machine-specific paths.

Field metadata drives validation (see ``_load.py``):

* ``choices``: allowed values of a string/categorical field;
* ``ge``/``gt``/``le``/``lt``: numeric bounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _f(default: Any, **meta: Any) -> Any:
    """A dataclass field with validation metadata."""
    if isinstance(default, (list, dict)):
        kind = type(default)
        return field(default_factory=lambda: kind(default), metadata=meta)
    return field(default=default, metadata=meta)


ENCODERS = (
    "lstm", "blstm", "gru", "bgru", "transformer", "conformer", "searched",
    # A pretrained Wav2Vec2/HuBERT or Whisper encoder from a local Hugging Face directory
    # (model.init_from).
    "hf_wav2vec2", "hf_whisper",
)  # fmt: skip
HEADS = ("ctc", "ctc_attention")
#: The ops of model.block_ops (encoder=searched); built by speechtune.models' SEARCH_OPS.
BLOCK_OPS = (
    "conv3", "conv7", "conv15", "conv31", "dconv7", "mhsa", "ff", "ff_half", "skip", "zero",
)  # fmt: skip
OPTIMIZERS = ("adam", "adamw", "sgd", "adafactor")
SCHEDULES = ("constant", "noam", "warmup_cosine", "warmup_exponential", "plateau", "cyclic")
LR_SCALING = ("none", "linear", "sqrt")
CORPORA = ("synthetic", "an4", "fsdd", "manifest")


@dataclass
class SyntheticConfig:
    """The espeak-ng generated AN4-style corpus (``data.corpus: synthetic``)."""

    num_utterances: int = _f(600, ge=1)
    seed: int = _f(0)
    # espeak-ng English accents; each one is a group for worst-group WER.
    accents: list[str] = _f(["en-us", "en", "en-gb-scotland", "en-029"])
    num_voices: int = _f(8, ge=1)
    noise_snr_db: float | None = _f(None)
    sample_rate: int = _f(16000, choices=(8000, 16000, 22050, 48000))


@dataclass
class DataConfig:
    corpus: str = _f("synthetic", choices=CORPORA)
    # Directory of the AN4 or FSDD distribution, or of a manifest corpus; cache dir for synthetic.
    root: str | None = _f(None)
    # For corpus=manifest: path of a JSONL/CSV/lhotse manifest or a Kaldi data dir.
    manifest: str | None = _f(None)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    dev_fraction: float = _f(0.1, gt=0.0, lt=1.0)
    split_seed: int = _f(0)
    # Proxy subset of the training split: a fraction of utterances or a number of hours
    # (stratified by speaker/group). 1.0 / None means all of it.
    proxy_fraction: float = _f(1.0, gt=0.0, le=1.0)
    proxy_hours: float | None = _f(None)
    max_duration: float = _f(30.0, gt=0.0)
    # Skip (and report) bad utterances instead of failing on them.
    skip_bad: bool = _f(False)
    # Characters transcripts may use (after upper-casing); null = A-Z, apostrophe and space.
    # Every one of them gets a token, whether or not the training subset happens to use it.
    charset: str | None = _f(None)
    # Speed perturbation of the training split (Ko et al., 2015): each utterance also at these
    # factors, e.g. [0.9, 1.0, 1.1]; [] = off. Each factor in [ge, le], checked per element
    # when the data are prepared (docs/data.md). Dev and test are never perturbed.
    speed_perturb: list[float] = _f([], ge=0.5, le=2.0)
    # Accept audio recorded below features.sample_rate and upsample it (by default such audio is
    # bad input: upsampling invents no information). For a model pretrained at a higher rate,
    # e.g. 8 kHz FSDD digits fine-tuned into a 16 kHz AN4 model: the mel bins above the audio's
    # Nyquist frequency stay (nearly) empty, the ones below mean what they meant in pretraining.
    allow_upsampling: bool = _f(False)


@dataclass
class FeaturesConfig:
    sample_rate: int = _f(16000, choices=(8000, 16000, 22050, 48000))
    window_ms: float = _f(25.0, gt=0.0, le=100.0)
    hop_ms: float = _f(10.0, gt=0.0, le=50.0)
    n_mels: int = _f(80, ge=8, le=256)
    f_min: float = _f(0.0, ge=0.0)
    f_max: float | None = _f(None)
    # Global mean/variance normalisation with statistics from the training split.
    normalize: bool = _f(True)
    # "logmel" features, or "waveform": the raw samples as [T, 1], each utterance normalised
    # to zero mean and unit variance, for encoders that read audio (model.encoder=hf_wav2vec2;
    # no global CMVN or SpecAugment then, and the log-mel keys above are unused), or
    # "whisper": Whisper's own log-mel features (model.encoder=hf_whisper; n_mels as the
    # pretrained encoder's num_mel_bins, 16 kHz; no global CMVN, SpecAugment applies).
    kind: str = _f("logmel", choices=("logmel", "waveform", "whisper"))


@dataclass
class SpecAugmentConfig:
    enabled: bool = _f(True)
    time_mask_width: int = _f(40, ge=0)
    freq_mask_width: int = _f(15, ge=0)
    num_time_masks: int = _f(2, ge=0)
    num_freq_masks: int = _f(2, ge=0)


@dataclass
class TokenizerConfig:
    kind: str = _f("char", choices=("char", "bpe"))
    vocab_size: int = _f(64, ge=4)


@dataclass
class ModelConfig:
    encoder: str = _f("conformer", choices=ENCODERS)
    d_model: int = _f(144, ge=8)
    num_layers: int = _f(4, ge=1)
    num_heads: int = _f(4, ge=1)
    ff_dim: int = _f(576, ge=8)
    conv_kernel: int = _f(15, ge=1)
    # encoder=searched: one op per block, comma-separated (e.g. "mhsa,conv15,ff,conv7"; one
    # op per model.num_layers). Ops: conv3, conv7, conv15, conv31, dconv7, mhsa, ff, ff_half,
    # skip, zero (speechtune/models/_searched.py); `speechtune nas` derives them.
    block_ops: str = _f("")
    # Conformer self-attention positions: "abs" adds sinusoids once after subsampling;
    # "rel" uses relative positional self-attention (Dai et al., 2019; Gulati et al., 2020).
    pos_enc: str = _f("abs", choices=("abs", "rel"))
    # Streaming Conformer: self-attention within chunks of chunk_ms of input audio (and
    # left_chunks previous chunks, -1: all), causal depthwise convolution. 0 is full context.
    # dynamic_chunk trains with a random chunk size per batch (WeNet's U2, Zhang et al., 2021).
    chunk_ms: float = _f(0.0, ge=0.0)
    left_chunks: int = _f(-1, ge=-1)
    dynamic_chunk: bool = _f(False)
    dropout: float = _f(0.1, ge=0.0, lt=1.0)
    subsampling: int = _f(4, choices=(1, 2, 4, 6, 8))
    head: str = _f("ctc", choices=HEADS)
    ctc_weight: float = _f(0.3, ge=0.0, le=1.0)
    # Intermediate CTC (Lee & Watanabe, 2021): the CTC loss is (1 - w) * final + w * the CTC
    # loss of block `interctc_layer`'s output through the same head. 0 disables it; layer 0
    # means the middle block (num_layers // 2). Transformer and Conformer encoders only.
    interctc_weight: float = _f(0.0, ge=0.0, lt=1.0)
    interctc_layer: int = _f(0, ge=0)
    decoder_layers: int = _f(2, ge=1)
    # "deepnorm" scales residual branches for deep stacks (Wang et al., 2022).
    init: str = _f("default", choices=("default", "deepnorm"))
    # Fine-tuning: start from the weights of a speechtune model.pt (or the run dir holding one).
    # Architecture keys must match it; output rows are mapped token by token (finetune section).
    init_from: str | None = _f(None)
    # model.encoder=hf_whisper: the encoder's input window in seconds (its positions are cut to
    # it, 50 per second); every utterance must fit. None: the pretrained model's (30 s).
    # Attention costs grow with its square, so short-utterance corpora want a short window.
    whisper_window_s: float | None = _f(None, gt=0.0, le=30.0)
    # Width and depth multipliers (MobileNet's alpha, Howard et al., 2017; EfficientNet's
    # width/depth coefficients, Tan & Le, 2019): scale d_model and ff_dim (d_model rounded to a
    # multiple of num_heads) and num_layers of this recipe, so one space fits any base size.
    # Applied when the config is loaded: the resolved sizes are what a run saves, with both 1.
    width_mult: float = _f(1.0, gt=0.0, le=4.0)
    depth_mult: float = _f(1.0, gt=0.0, le=4.0)

    @property
    def interctc_block(self) -> int:
        """The 1-based block intermediate CTC taps: ``interctc_layer``, or the middle one for 0."""
        return self.interctc_layer or self.num_layers // 2


@dataclass
class OptimConfig:
    name: str = _f("adamw", choices=OPTIMIZERS)
    lr: float = _f(1e-3, gt=0.0)
    beta1: float = _f(0.9, ge=0.0, lt=1.0)
    beta2: float = _f(0.98, ge=0.0, lt=1.0)
    eps: float = _f(1e-9, gt=0.0)
    weight_decay: float = _f(1e-3, ge=0.0)
    momentum: float = _f(0.9, ge=0.0, lt=1.0)
    nesterov: bool = _f(False)


@dataclass
class ScheduleConfig:
    name: str = _f("warmup_cosine", choices=SCHEDULES)
    warmup_steps: int = _f(200, ge=0)
    # Floor of cosine / exponential decay, as a fraction of the peak lr.
    min_lr_ratio: float = _f(0.01, ge=0.0, le=1.0)
    # warmup_exponential: lr *= gamma every step after warmup.
    gamma: float = _f(0.999, gt=0.0, le=1.0)
    # plateau: multiply lr by factor when dev loss has not improved for `patience` epochs.
    plateau_factor: float = _f(0.5, gt=0.0, lt=1.0)
    plateau_patience: int = _f(2, ge=0)
    # cyclic (triangular): one cycle lasts cycle_steps; lr goes peak -> min -> peak after warmup.
    cycle_steps: int = _f(1000, ge=2)


@dataclass
class TrainConfig:
    epochs: int = _f(20, ge=1)
    # Horizon of the lr schedule in epochs (null = train.epochs). A run of E1 epochs with
    # schedule_epochs=E2 follows exactly the first E1 epochs of an E2-epoch run, so it can be
    # resumed with train.epochs=E2 and end where a straight E2-epoch run ends (multi-fidelity
    # promotion continues a checkpoint this way).
    schedule_epochs: int | None = _f(None, ge=1)
    batch_size: int = _f(16, ge=1)
    grad_accum: int = _f(1, ge=1)
    devices: int = _f(1, ge=1)
    # Scale optim.lr by effective batch / reference_batch (linear) or its square root.
    lr_scaling: str = _f("none", choices=LR_SCALING)
    reference_batch: int = _f(16, ge=1)
    grad_clip: float | None = _f(5.0)
    bucketed: bool = _f(True)
    num_buckets: int = _f(10, ge=1)
    precision: str = _f("auto", choices=("auto", "fp32", "bf16"))
    # Flatline: training loss relative change below `flatline_tol` for `flatline_patience`
    # epochs in a row ends the run with reason "flatline". 0 disables it.
    flatline_patience: int = _f(3, ge=0)
    flatline_tol: float = _f(1e-3, ge=0.0)
    # The final model averages the weights of this many best epochs (by dev WER, then dev
    # loss), as ESPnet/NeMo recipes do; kept only when it is no worse on dev. 1: the best epoch.
    average_best: int = _f(1, ge=1)


@dataclass
class DecodeConfig:
    method: str = _f("greedy", choices=("greedy", "beam"))
    beam_size: int = _f(4, ge=1)
    # Weight of CTC prefix scores in joint attention beam search (ctc_attention head only).
    ctc_weight: float = _f(0.3, ge=0.0, le=1.0)
    max_len_ratio: float = _f(1.0, gt=0.0)


LORA_TARGETS = ("attention_qv", "attention", "all_linear")


@dataclass
class FinetuneConfig:
    """What trains, and how fast, when adapting a model (usually one loaded by model.init_from)."""

    # Freeze the convolutional subsampling front end.
    freeze_frontend: bool = _f(False)
    # Freeze the bottom N encoder layers (0: none).
    freeze_layers: int = _f(0, ge=0)
    # Layer-wise lr decay: encoder layer i of N trains at lr * decay**(N - i), the front end at
    # decay**(N + 1), heads and decoder at lr. 1 is off.
    layer_lr_decay: float = _f(1.0, gt=0.0, le=1.0)
    # LoRA adapters (Hu et al., 2021) through peft; 0 is off. The output layers still train.
    lora_rank: int = _f(0, ge=0)
    lora_alpha: float = _f(16.0, gt=0.0)
    lora_dropout: float = _f(0.0, ge=0.0, lt=1.0)
    lora_targets: str = _f("attention_qv", choices=LORA_TARGETS)


QUANTIZE = ("none", "dynamic_int8", "static_int8", "qat_int8", "weight_int4")
OBSERVERS = ("minmax", "moving_average")
PRUNE_SCHEDULES = ("linear", "cubic")


@dataclass
class EdgeConfig:
    """Making the model small and fast on a CPU: int8/int4 quantisation and magnitude pruning."""

    # Int8 quantisation (torch.ao eager mode): dynamic or static after training, or
    # quantisation-aware training (the whole run) converted after it; or weight_int4: Linear and
    # Conv weights stored as group-wise int4 after training (smaller, not faster: they are
    # dequantised to float to compute). "none" keeps fp32.
    quantize: str = _f("none", choices=QUANTIZE)
    # weight_int4: weights per scale and zero point (a row shorter than this is one group).
    int4_group_size: int = _f(32, choices=(16, 32, 64, 128))
    # Activation-range observer of static_int8 calibration and of qat_int8 fake quantisation.
    observer: str = _f("minmax", choices=OBSERVERS)
    # static_int8: training batches run through the model to calibrate activation ranges.
    calibration_batches: int = _f(8, ge=1)
    # Unstructured magnitude pruning of Linear/Conv weights to this share of zeros; 0 is off.
    prune_sparsity: float = _f(0.0, ge=0.0, le=0.95)
    # Sparsity ramp from prune_start to prune_end (shares of the training steps): linear, or
    # cubic (Zhu & Gupta, 2017: fast at first, slow near the target).
    prune_schedule: str = _f("cubic", choices=PRUNE_SCHEDULES)
    prune_start: float = _f(0.2, ge=0.0, lt=1.0)
    prune_end: float = _f(0.8, gt=0.0, le=1.0)
    # With pruning, model.pt stores each mostly-zero float weight as a bitmask of its nonzeros
    # and their values (lossless), so the file shrinks with the sparsity; false stores zeros.
    sparse_storage: bool = _f(True)


@dataclass
class RecipeConfig:
    """The complete ASR recipe: everything a tuner may vary."""

    seed: int = _f(42)
    data: DataConfig = field(default_factory=DataConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    specaugment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    edge: EdgeConfig = field(default_factory=EdgeConfig)


@dataclass(frozen=True)
class RunOptions:
    """How and where to run: never tuned, never written into ``best.yaml``."""

    output_dir: str = "runs/train"
    device: str = "auto"
    cache_dir: str = ".cache/speechtune"
    num_threads: int | None = None
    progress: bool = True
    resume: bool = False
