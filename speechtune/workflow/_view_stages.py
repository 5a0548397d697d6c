"""The body of each stage's section in the workflow report, built from the stage's typed result."""

from __future__ import annotations

from collections.abc import Mapping

from speechtune._urls import mask_url
from speechtune.workflow._blocks import (
    Block,
    Cell,
    Para,
    b,
    code,
    facts,
    inline,
    para,
    table,
)
from speechtune.workflow._format import (
    DASH,
    integer,
    mdiff,
    metric_label,
    mval,
    num,
    param,
    params_text,
    pct,
    pp,
    size,
    yes_no,
)
from speechtune.workflow._results import (
    BaselineResult,
    ExportResult,
    FullBaseline,
    FullResult,
    GateResult,
    Metrics,
    ProxyResult,
    SearchResult,
    StageResult,
    ValidateResult,
)
from speechtune.workflow._wer_path import FULL_DEV, PROXY_DEV


def stage_body(result: StageResult, metric: str) -> list[Block]:
    """The facts and tables of one stage's result (``metric``: the tuned metric)."""
    if isinstance(result, ProxyResult):
        return _proxy(result)
    if isinstance(result, BaselineResult):
        return _baseline(result, metric)
    if isinstance(result, SearchResult):
        return _search(result, metric)
    if isinstance(result, ValidateResult):
        return _validate(result, metric)
    if isinstance(result, FullResult):
        return _full(result, metric)
    if isinstance(result, GateResult):
        return _gate(result)
    if isinstance(result, ExportResult):
        return _export(result)
    return []


def promotion(gate: GateResult) -> Para:
    """The gate's verdict as a call-out (in the summary and in the gate's section)."""
    model, version = gate.model_name or "the model", gate.registered_version
    reg = (
        inline("version ", b(version), " of ", code(model))
        if version is not None
        else inline(code(model))
    )
    if gate.promoted is True:
        return para(
            b("Promoted: YES."), " The challenger, ", reg, ", is the new champion.", kind="ok"
        )
    champion = gate.champion
    stays = (
        f" The champion (version {champion.version}) stays."
        if champion and champion.version is not None
        else ""
    )
    return para(
        b("Promoted: NO."),
        " The challenger, ",
        reg,
        ", was registered but not promoted.",
        stays,
        kind="alert",
    )


def _proxy(r: ProxyResult) -> list[Block]:
    fraction, hours = num(r.fraction), num(r.hours)
    if hours is not None:
        selection = f"{hours:g} h of the training set"
    elif fraction is not None:
        selection = f"{100 * fraction:g}% of the training set's hours"
    else:
        selection = "the whole training set"
    rows: list[list[Cell]] = []
    for d, label in (
        (r.train_full, "full training set"),
        (r.proxy, "proxy training set"),
        (r.dev, "dev set"),
    ):
        groups = list(d.groups)
        shown = ", ".join(groups[:8]) + (f", … (+{len(groups) - 8})" if len(groups) > 8 else "")
        hrs = num(d.hours)
        fingerprint = code(d.fingerprint[:12]) if d.fingerprint else DASH
        rows.append(
            [
                label,
                integer(d.utterances),
                DASH if hrs is None else f"{hrs:.2f}",
                integer(d.speakers),
                shown or DASH,
                fingerprint,
            ]
        )
    seed = DASH if r.seed is None else r.seed
    return [
        facts(("proxy subset", f"{selection}, stratified, seed {seed}")),
        table(
            ["set", "utterances", "hours", "speakers", "groups", "fingerprint"],
            rows,
            numeric=(1, 2, 3),
        ),
        facts(*((f"manifest {k}", code(v)) for k, v in r.manifests.items())),
    ]


def _dev_metrics(dev: Metrics, split: str) -> list[Block]:
    """Overall WER/CER/worst-group WER and the per-group WER table of one evaluation."""
    groups: Mapping[str, float | None] = dev.group_wer or {}
    worst = dev.worst_group
    if worst is None and groups:
        scored = [(v, g) for g, v in groups.items() if v is not None and num(v) is not None]
        worst = max(scored)[1] if scored else None
    suffix = f" ({worst})" if worst is not None else ""
    blocks: list[Block] = [
        table(
            ["split", "WER", "CER", "worst-group WER"],
            [[split, b(pct(dev.wer)), pct(dev.cer), pct(dev.worst_group_wer) + suffix]],
            numeric=(1, 2, 3),
        )
    ]
    if groups:
        rows: list[list[Cell]] = [
            [b(f"{g} (worst)") if g == worst else g, pct(v)] for g, v in sorted(groups.items())
        ]
        blocks.append(table(["group", "WER"], rows, numeric=(1,)))
    return blocks


def _tuned_metric(value: float | None, metric: str, split: str) -> tuple[str, Cell]:
    return ("tuned metric", inline(b(mval(metric, value)), f" {metric_label(metric)} ({split})"))


def _baseline(r: BaselineResult, metric: str) -> list[Block]:
    return [
        facts(
            _tuned_metric(r.value, metric, PROXY_DEV),
            ("seed", DASH if r.seed is None else str(r.seed)),
            ("run directory", code(r.run_dir)) if r.run_dir else None,
        ),
        *_dev_metrics(r.dev, PROXY_DEV),
    ]


def _search(r: SearchResult, metric: str) -> list[Block]:
    best = r.best
    counts = (
        f"{integer(r.n_trials)} trials: {integer(r.n_complete)} complete, {integer(r.n_pruned)} pruned, "
        f"{integer(r.n_failed)} failed"
    )
    warm = f"{integer(r.warm_started)} coarse trials added as prior evidence"
    best_line = inline(
        "trial #",
        str(best.trial),
        ", ",
        b(mval(metric, best.value)),
        f" {metric_label(metric)} ({PROXY_DEV})",
    )
    blocks: list[Block] = [
        facts(
            ("trials", counts),
            ("warm start", warm) if r.warm_started is not None else None,
            ("sampler / pruner", f"{r.sampler or DASH} / {r.pruner or DASH}"),
            ("study", inline(code(r.study), " in ", code(mask_url(r.storage)))),
            ("run directory", code(r.run_dir)) if r.run_dir else None,
            ("best", best_line),
        )
    ]
    if best.params:
        rows: list[list[Cell]] = [[code(k), param(v)] for k, v in sorted(best.params.items())]
        blocks.append(table(["best parameter", "value"], rows))
    if r.narrowed:
        rows = [[code(k), v.before, v.after] for k, v in sorted(r.narrowed.items())]
        blocks += [
            para("Search space narrowed around the coarse search's top configurations:"),
            table(["parameter", "before", "after"], rows),
        ]
    if r.top:
        rows = [
            [str(i), f"#{t.trial}", mval(metric, t.value), params_text(t.params)]
            for i, t in enumerate(r.top, 1)
        ]
        blocks += [
            para("Top configurations:"),
            table(["rank", "trial", metric_label(metric), "parameters"], rows, numeric=(0, 2)),
        ]
    return blocks


def _validate(r: ValidateResult, metric: str) -> list[Block]:
    seeds = list(r.seeds)
    width = max([len(seeds)] + [len(c.values) for c in r.candidates])
    seed_cols = [f"seed {seeds[i]}" if i < len(seeds) else f"run {i + 1}" for i in range(width)]
    rows: list[list[Cell]] = []
    for c in r.candidates:
        is_winner = c.name == r.winner
        spread = f"{mval(metric, c.mean)} ± {mdiff(metric, c.std)}"
        per_seed = [mval(metric, c.values[i]) if i < len(c.values) else DASH for i in range(width)]
        name: Cell = inline(b(c.name), " (winner)") if is_winner else c.name
        rows.append([name, *per_seed, b(spread) if is_winner else spread, params_text(c.params)])
    test = r.test
    alpha = r.alpha if r.alpha is not None else test.alpha if test is not None else None
    blocks: list[Block] = [
        facts(
            ("seeds", ", ".join(str(s) for s in seeds) or DASH),
            ("alpha", DASH if alpha is None else str(alpha)),
            ("winner", b(r.winner)),
        ),
        table(
            ["candidate", *seed_cols, "mean ± std", "parameters"],
            rows,
            numeric=tuple(range(1, width + 2)),
        ),
    ]
    if test is not None:
        stat, p = num(test.statistic), num(test.p_value)
        test_alpha = test.alpha if test.alpha is not None else r.alpha
        blocks.append(para(b("Test:"), " ", test.statement or "no statement recorded"))
        blocks.append(
            facts(
                ("method", test.method),
                ("statistic", DASH if stat is None else f"{stat:.3g}"),
                ("p-value", DASH if p is None else f"{p:.3g}"),
                (
                    "significant",
                    f"{yes_no(test.significant)} at alpha {DASH if test_alpha is None else test_alpha}",
                ),
            )
        )
    return blocks


def _full(r: FullResult, metric: str) -> list[Block]:
    winner = r.tuned.value if r.tuned is not None else r.value
    return [
        facts(
            _tuned_metric(r.value, metric, FULL_DEV),
            ("seed / epochs", f"{r.seed} / {DASH if r.epochs is None else r.epochs}"),
            ("parameters", params_text(r.params)),
            ("model", code(r.model)) if r.model else None,
            ("run directory", code(r.run_dir)) if r.run_dir else None,
        ),
        *_dev_metrics(r.dev, FULL_DEV),
        *_full_baseline(r.baseline, metric, winner),
    ]


def _full_baseline(base: FullBaseline | None, metric: str, winner: float | None) -> list[Block]:
    if base is None:
        return []
    value = num(base.value)
    if value is None:
        line = inline(
            f"The baseline trained the same way did not finish ({base.status or 'unknown'}): {base.reason or ''}"
        )
    else:
        diff = winner - value if num(winner) is not None and winner is not None else None
        against = (
            f"; the winner is {mdiff(metric, diff, signed=True)} against it."
            if diff is not None
            else "."
        )
        line = inline(
            "The recipe's defaults trained the same way (all data, same epochs and seed): ",
            b(mval(metric, value)),
            f" {metric_label(metric)}{against}",
        )
    dev = _dev_metrics(base.dev, f"{FULL_DEV} (baseline)") if base.dev.to_dict() else []
    return [Para(line), *dev]


def _gate(r: GateResult) -> list[Block]:
    metric = r.gate_metric
    golden, ch, champ = r.golden, r.challenger, r.champion
    blocks: list[Block] = [promotion(r)]
    if r.decision:
        blocks.append(para(b("Decision:"), " ", r.decision))
    hrs = num(golden.hours)
    golden_line = inline(
        code(golden.source),
        f", {integer(golden.utterances)} utterances, {DASH if hrs is None else f'{hrs:.2f}'} h, fingerprint ",
        code((golden.fingerprint or DASH)[:12]),
    )
    rule = (
        f"promote only if the challenger's golden {metric_label(metric)} is lower than the champion's "
        f"by at least {mdiff(metric, r.margin)} (margin)"
    )
    registered = inline(
        code(r.model_name or DASH),
        " version ",
        b(r.registered_version or DASH),
        " at ",
        code(mask_url(r.tracking_uri or DASH)),
    )
    blocks.append(
        facts(
            ("golden set", golden_line),
            ("rule", rule),
            ("registered", registered),
            ("promoted", b(yes_no(r.promoted))),
        )
    )
    champ_head = f"champion (v{champ.version})" if champ else "champion"
    rows: list[list[Cell]] = []
    for key in ("wer", "cer", "worst_group_wer"):
        mine, theirs = ch.value(key), champ.value(key) if champ else None
        diff = mine - theirs if mine is not None and theirs is not None else None
        label = metric_label(key) + (" (gate metric)" if key == metric else "")
        ca, cb = pct(mine), pct(theirs) if champ else "none"
        if key == "worst_group_wer":
            ca += f" ({ch.worst_group})" if ch.worst_group is not None else ""
            cb += (
                f" ({champ.worst_group})"
                if champ is not None and champ.worst_group is not None
                else ""
            )
        rows.append([b(label) if key == metric else label, ca, cb, pp(diff, signed=True)])
    blocks.append(
        table(
            ["golden", "challenger", champ_head, "challenger − champion"], rows, numeric=(1, 2, 3)
        )
    )
    if not champ:
        blocks.append(
            para(
                "There was no champion: this is the first model registered under this name.",
                kind="note",
            )
        )
    groups_a = ch.group_wer or {}
    groups_b = (champ.group_wer if champ else None) or {}
    rows = []
    for g in sorted(set(groups_a) | set(groups_b)):
        a, c = num(groups_a.get(g)), num(groups_b.get(g))
        name: Cell = b(f"{g} (challenger's worst)") if g == ch.worst_group else g
        rows.append(
            [
                name,
                pct(a),
                pct(c),
                pp(a - c, signed=True) if a is not None and c is not None else DASH,
            ]
        )
    if rows:
        head = ["group", "challenger WER", f"{champ_head} WER", "challenger − champion"]
        blocks.append(table(head, rows, numeric=(1, 2, 3)))
    return blocks


def _export(r: ExportResult) -> list[Block]:
    if r.format == "none" or not r.path:
        return [para(f"Nothing exported (format: {r.format}).", kind="note")]
    return [facts(("format", r.format), ("path", code(r.path)), ("size", size(r.size)))]
