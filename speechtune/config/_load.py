"""Load, override, validate and dump recipe configs.

Validation collects *every* problem before raising, each with its dotted key, the rule it
breaks and the value received, so that a user fixes a YAML file in one pass.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from speechtune.config._finetune import finetune_problems
from speechtune.config._schema import RecipeConfig
from speechtune.config._searched import block_ops_problems, join_block_ops


@dataclasses.dataclass(frozen=True)
class ConfigProblem:
    key: str
    rule: str
    value: Any

    def __str__(self) -> str:
        return f"{self.key}: {self.rule} (got {self.value!r})"


class ConfigError(ValueError):
    """Raised with every problem found in a config."""

    def __init__(self, problems: Sequence[ConfigProblem], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s){where}:\n{lines}")


class YamlFileError(ValueError):
    """A YAML file that is not UTF-8 text or does not parse.

    ``reason`` is one line that says where (byte offset or line and column) and what was
    expected; ``snippet`` is the offending line, for the ``got`` part of a problem.
    """

    def __init__(self, path: str | Path, reason: str, snippet: str | bytes) -> None:
        self.path = str(path)
        self.reason = reason
        self.snippet = snippet
        super().__init__(f"{path} {reason} (got {snippet!r})")


_TAG = re.compile(r"constructor for the tag '([^']*)'")


def yaml_error_reason(exc: BaseException, positions: bool = True) -> str:
    """One line for an error of ``yaml.safe_load``: the problem, where, and what it was parsing.

    PyYAML's own message spans several lines with a caret drawing; ``positions=False`` leaves
    out line and column (for a one-line ``--set`` value).
    """
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
    tag = _TAG.search(problem)
    if tag:
        name = tag.group(1).replace("tag:yaml.org,2002:", "!!")
        problem = f"tag {name} is not allowed (plain YAML values only, no Python objects)"
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if positions and mark else ""
    context = getattr(exc, "context", None)
    if context:
        cmark = getattr(exc, "context_mark", None)
        at = f" at line {cmark.line + 1}, column {cmark.column + 1}" if positions and cmark else ""
        problem += f" ({context}{at})"
    return where + problem


def _line_at(text: str, line: int) -> str:
    lines = text.splitlines()
    return lines[line].strip()[:80] if 0 <= line < len(lines) else ""


def decode_utf8(data: bytes, path: str | Path) -> str:
    """``data`` (the bytes of file ``path``) as text, without a leading byte-order mark.

    Raises:
        YamlFileError: the bytes are not UTF-8; the reason names the byte, its offset and line.
    """
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        start = data.rfind(b"\n", 0, exc.start) + 1
        end = data.find(b"\n", exc.start)
        snippet = data[start : end if end >= 0 else len(data)][:80]
        raise YamlFileError(
            path,
            f"is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start} (line "
            f"{line}, column {column}) cannot be decoded; expected UTF-8 (save the file as UTF-8)",
            snippet.strip(),
        ) from exc


def read_yaml(path: str | Path) -> Any:
    """The content of a YAML (or JSON) file, read as UTF-8.

    Raises:
        OSError: the file cannot be read.
        YamlFileError: it is not UTF-8 or not valid YAML (one line, with the position).
    """
    text = decode_utf8(Path(path).read_bytes(), path)
    try:
        return yaml.safe_load(text)
    # ValueError: an integer of over 4300 digits; RecursionError: thousands of nested brackets.
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        # The offending line; at the end of the file, the line where the open bracket was.
        marks = [getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)]
        lines = [_line_at(text, mark.line) for mark in marks if mark is not None]
        raise YamlFileError(
            path,
            f"is not valid YAML: {yaml_error_reason(exc)}",
            next((line for line in lines if line), ""),
        ) from exc


_MISSING = object()
_T = typing.TypeVar("_T")


def _type_ok(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check (and gently coerce) ``value`` against annotation ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return True, None
        for arg in args:
            if arg is type(None):
                continue
            ok, coerced = _type_ok(value, arg)
            if ok:
                return True, coerced
        return False, value
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            return False, value
        out = []
        for v in value:
            ok, c = _type_ok(v, item_tp)
            if not ok:
                return False, value
            out.append(c)
        return True, out
    if tp is Any:
        return True, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, int):
            return True, value
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        return False, value
    if tp is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, (int, float)):
            return True, float(value)
        if isinstance(value, str):  # YAML reads "1e-3" as a string
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if tp is str:
        return isinstance(value, str), value
    return isinstance(value, tp), value


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _build(cls: type, data: Any, prefix: str, problems: list[ConfigProblem]) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        problems.append(ConfigProblem(prefix or "<root>", "must be a mapping", data))
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            valid = ", ".join(sorted(fields))
            problems.append(
                ConfigProblem(
                    f"{prefix}{key}", f"unknown key; valid keys here: {valid}", data[key]
                )
            )
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key = f"{prefix}{name}"
        tp = hints[name]
        value = data[name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key + ".", problems)
            continue
        ok, coerced = _type_ok(value, tp)
        if not ok:
            problems.append(ConfigProblem(key, f"must be {_type_name(tp)}", value))
            continue
        meta = f.metadata
        if "choices" in meta and coerced is not None and coerced not in meta["choices"]:
            choices = ", ".join(map(str, meta["choices"]))
            problems.append(ConfigProblem(key, f"must be one of: {choices}", value))
            continue
        bad = _bound_problem(coerced, meta)
        if bad:
            problems.append(ConfigProblem(key, bad, value))
            continue
        kwargs[name] = coerced
    return cls(**kwargs)


def _bound_problem(value: Any, meta: Mapping[str, Any]) -> str | None:
    if value is None or isinstance(value, (bool, str, list)):
        return None
    for op, test, word in (
        ("ge", lambda v, b: v >= b, ">="),
        ("gt", lambda v, b: v > b, ">"),
        ("le", lambda v, b: v <= b, "<="),
        ("lt", lambda v, b: v < b, "<"),
    ):
        if op in meta and not test(value, meta[op]):
            return f"must be {word} {meta[op]}"
    return None


def _cross_checks(cfg: RecipeConfig) -> list[ConfigProblem]:
    """Rules that involve more than one key."""
    out: list[ConfigProblem] = []
    m, fe = cfg.model, cfg.features
    if m.encoder in ("transformer", "conformer") and m.d_model % m.num_heads:
        out.append(
            ConfigProblem(
                "model.d_model", f"must be divisible by model.num_heads={m.num_heads}", m.d_model
            )
        )
    if m.head == "ctc_attention" and m.d_model % m.num_heads:
        out.append(
            ConfigProblem(
                "model.num_heads",
                "must divide model.d_model for the attention decoder",
                m.num_heads,
            )
        )
    if m.encoder == "conformer" and m.conv_kernel % 2 == 0:
        out.append(
            ConfigProblem(
                "model.conv_kernel", "must be odd (same-length depthwise conv)", m.conv_kernel
            )
        )
    if m.interctc_weight > 0 and m.encoder in ("transformer", "conformer"):
        if not 1 <= m.interctc_block < m.num_layers:
            out.append(
                ConfigProblem(
                    "model.interctc_layer",
                    f"must be a block below the last of model.num_layers={m.num_layers} "
                    f"(1..{m.num_layers - 1}, or 0 for the middle; intermediate CTC needs "
                    ">= 2 layers)",
                    m.interctc_layer,
                )
            )
    out.extend(ConfigProblem(*p) for p in block_ops_problems(cfg.model))
    out.extend(ConfigProblem(*p) for p in finetune_problems(cfg))
    out.extend(_streaming_checks(cfg))
    edge = cfg.edge
    if edge.prune_sparsity > 0 and edge.prune_start >= edge.prune_end:
        out.append(
            ConfigProblem(
                "edge.prune_start", f"must be < edge.prune_end={edge.prune_end}", edge.prune_start
            )
        )
    if cfg.finetune.lora_rank > 0 and (edge.prune_sparsity > 0 or edge.quantize == "qat_int8"):
        # Masks and fake quantisation would act on the adapters, not on the merged weights.
        key = "edge.prune_sparsity" if edge.prune_sparsity > 0 else "edge.quantize"
        out.append(
            ConfigProblem(
                key,
                "cannot be combined with LoRA (finetune.lora_rank > 0); post-training "
                "dynamic_int8/static_int8 can",
                getattr(edge, key.split(".")[1]),
            )
        )
    sp = cfg.data.speed_perturb
    if any(not 0.5 <= float(f) <= 2.0 for f in sp) or len(set(sp)) != len(sp):
        # Also checked where the data are prepared (for callers that skip the loader).
        out.append(
            ConfigProblem(
                "data.speed_perturb", "must hold distinct speed factors in [0.5, 2]", list(sp)
            )
        )
    if fe.hop_ms > fe.window_ms:
        out.append(
            ConfigProblem(
                "features.hop_ms", f"must be <= features.window_ms={fe.window_ms}", fe.hop_ms
            )
        )
    nyquist = fe.sample_rate / 2
    if fe.f_max is not None and not (fe.f_min < fe.f_max <= nyquist):
        out.append(
            ConfigProblem(
                "features.f_max",
                f"must be in (features.f_min, {nyquist:g}] for sample_rate {fe.sample_rate}",
                fe.f_max,
            )
        )
    if cfg.data.corpus in ("an4", "fsdd") and not cfg.data.root:
        name = "AN4" if cfg.data.corpus == "an4" else "FSDD"
        out.append(
            ConfigProblem(
                "data.root",
                f"is required for corpus {cfg.data.corpus!r} (directory of the {name} distribution)",
                None,
            )
        )
    if cfg.data.corpus == "manifest" and not cfg.data.manifest:
        out.append(ConfigProblem("data.manifest", "is required for corpus 'manifest'", None))
    if cfg.decode.method == "beam" and m.head != "ctc_attention" and cfg.decode.beam_size > 1:
        # CTC prefix beam search without an LM gains little; we decode CTC greedily.
        out.append(
            ConfigProblem(
                "decode.method",
                "beam search needs model.head=ctc_attention; use greedy for ctc",
                "beam",
            )
        )
    if cfg.data.proxy_hours is not None and cfg.data.proxy_hours <= 0:
        out.append(ConfigProblem("data.proxy_hours", "must be > 0", cfg.data.proxy_hours))
    if cfg.train.grad_clip is not None and cfg.train.grad_clip <= 0:
        out.append(ConfigProblem("train.grad_clip", "must be > 0 or null", cfg.train.grad_clip))
    return out


def _streaming_checks(cfg: RecipeConfig) -> list[ConfigProblem]:
    """The streaming keys (``model.chunk_ms``...) against the encoder and the frame rate."""
    out: list[ConfigProblem] = []
    m = cfg.model
    if m.chunk_ms > 0 and m.encoder != "conformer":
        out.append(
            ConfigProblem(
                "model.chunk_ms",
                f"streaming (chunk_ms > 0) needs model.encoder=conformer, not {m.encoder!r}",
                m.chunk_ms,
            )
        )
    frame_ms = cfg.features.hop_ms * m.subsampling
    if 0 < m.chunk_ms < frame_ms:
        out.append(
            ConfigProblem(
                "model.chunk_ms",
                f"must be 0 (full context) or >= one encoder frame, features.hop_ms x "
                f"model.subsampling = {frame_ms:g} ms",
                m.chunk_ms,
            )
        )
    # dynamic_chunk and left_chunks without chunk_ms have no effect (build_encoder warns): a
    # space that samples them beside chunk_ms is checked key by key against its base recipe.
    return out


def _apply_multipliers(cfg: RecipeConfig) -> RecipeConfig:
    """Resolve ``model.width_mult`` / ``model.depth_mult`` into the sizes they scale (both -> 1).

    Width keeps d_model a multiple of num_heads (attention splits it evenly) and ff_dim's ratio
    to it; depth rounds to at least one layer. Resolving once here means every consumer (the
    model builder, streaming, fine-tuning's architecture check, export) sees plain sizes, and a
    saved config reloads to the same model.
    """
    m = cfg.model
    if m.width_mult == 1.0 and m.depth_mult == 1.0:
        return cfg
    heads = m.num_heads
    d_model = round(m.d_model * m.width_mult / heads) * heads
    d_model = max(d_model, -(-8 // heads) * heads)  # the schema's floor of 8, still divisible
    ff_dim = max(8, round(m.ff_dim * d_model / m.d_model))
    layers = max(1, round(m.num_layers * m.depth_mult))
    model = dataclasses.replace(
        m, d_model=d_model, ff_dim=ff_dim, num_layers=layers, width_mult=1.0, depth_mult=1.0
    )
    return dataclasses.replace(cfg, model=model)


def config_from_dict(data: Mapping[str, Any] | None, source: str | None = None) -> RecipeConfig:
    """Build and validate a :class:`RecipeConfig`; raise :class:`ConfigError` listing every problem.

    Per-block ops (``model.block_ops.<i>``) are joined first (:func:`join_block_ops`)."""
    joined, found = join_block_ops(data or {})
    problems = [ConfigProblem(*p) for p in found]
    cfg = _build(RecipeConfig, joined, "", problems)
    if not problems:
        cfg = _apply_multipliers(cfg)
        problems.extend(_cross_checks(cfg))
    if problems:
        raise ConfigError(problems, source)
    return cfg


def dataclass_from_dict(cls: type[_T], data: Any, source: str | None = None) -> _T:
    """Build and validate any config dataclass of ``_f`` fields, as :func:`config_from_dict` does.

    For configs other than the ASR recipe (the TTS recipe): unknown keys, wrong types, choices
    and bounds are checked the same way, every problem at once.

    Raises:
        ConfigError: listing every problem, each with its dotted key.
    """
    problems: list[ConfigProblem] = []
    cfg = _build(cls, data if data is not None else {}, "", problems)
    if problems:
        raise ConfigError(problems, source)
    return typing.cast(_T, cfg)


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Parse ``["model.num_layers=6", ...]`` into a nested dict (values read as YAML scalars)."""
    nested: dict[str, Any] = {}
    problems: list[ConfigProblem] = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            problems.append(ConfigProblem(item, "override must look like dotted.key=value", item))
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except (yaml.YAMLError, ValueError, RecursionError) as exc:
            problems.append(
                ConfigProblem(
                    f"--set {item}",
                    f"{yaml_error_reason(exc, positions=False)}; expected a YAML scalar, "
                    "list or mapping after '=' (quote the value if it holds YAML syntax)",
                    raw,
                )
            )
            continue
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(ConfigProblem(key, "conflicts with another override", item))
                break
        else:
            node[parts[-1]] = value
    if problems:
        raise ConfigError(problems, "overrides")
    return nested


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base``."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"model.d_model": 4}`` -> ``{"model": {"d_model": 4}}``.

    Raises:
        ConfigError: a key is both a value and a section (``a: 1`` and ``a.b: 2``).
    """
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = nested
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    [
                        ConfigProblem(
                            key, f"conflicts with the value of {'.'.join(parts[: i + 1])}", value
                        )
                    ]
                )
            node = child
        if isinstance(node.get(parts[-1]), dict) and not isinstance(value, Mapping):
            raise ConfigError(
                [
                    ConfigProblem(
                        key, "is a section with sub-keys; it cannot also be a value", value
                    )
                ]
            )
        node[parts[-1]] = value
    return nested


def read_config_mapping(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a config YAML, or :class:`ConfigError` with one problem naming
    the file: unreadable, not UTF-8 or not YAML, empty, or not a mapping."""
    try:
        loaded = read_yaml(path)
    except OSError as exc:
        raise ConfigError([ConfigProblem(str(path), "cannot read config file", str(exc))]) from exc
    except YamlFileError as exc:
        raise ConfigError([ConfigProblem(str(path), exc.reason, exc.snippet)]) from exc
    if loaded is None:  # an empty (or truncated-to-nothing) file is a mistake, not "defaults"
        raise ConfigError(
            [
                ConfigProblem(
                    str(path),
                    "the file is empty; expected a mapping of sections such as model: and "
                    "train: (leave out --config for the built-in defaults)",
                    "",
                )
            ]
        )
    if not isinstance(loaded, dict):
        raise ConfigError(
            [ConfigProblem(str(path), "top level must be a mapping", type(loaded).__name__)]
        )
    return loaded


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RecipeConfig:
    """Load a recipe YAML (or the defaults when ``path`` is None) and apply dotted overrides."""
    data = read_config_mapping(path) if path is not None else {}
    if overrides:
        data = merge(data, parse_overrides(overrides))
    return config_from_dict(data, None if path is None else str(path))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (round-trips through :func:`config_from_dict`)."""
    return dataclasses.asdict(cfg)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"d_model": 4}}`` -> ``{"model.d_model": 4}``."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def dump_config(cfg: RecipeConfig, path: str | Path) -> None:
    """Write a complete, reloadable YAML of ``cfg``."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
