"""The functions that build report.html's sections and figures, on in-memory studies (fast).

Issue 14: a new user's report put cost before the results, showed parameter importance from 4
tied trials, drew 17 crowded parallel-coordinate axes with "None" ticks, fractional trial and
epoch ticks, and an always-empty "std over seeds" column.
"""

from __future__ import annotations

import re

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from speechtune.reports._figures import history_figure, learning_curves_figure
from speechtune.reports._html import ran_several_seeds, report_sections, top_trials_table
from speechtune.reports._importance import (
    MIN_DISTINCT_VALUES,
    MIN_IMPORTANCE_TRIALS,
    Importance,
    distinct_values,
    param_importances,
)
from speechtune.reports._parallel import (
    INACTIVE,
    MAX_AXES,
    parallel_figure,
    parallel_params,
    parameter_axis,
)
from speechtune.reports._ticks import integer_axis, integer_step
from tests.helpers.reports import WIDE_SPACE, make_wide_study

optuna.logging.set_verbosity(optuna.logging.WARNING)
NO_IMPORTANCE = Importance({}, "", "not computed")


def _section_ids(sections: list[str]) -> list[str]:
    return [re.match(r'<section id="([^"]+)"', s).group(1) for s in sections]  # type: ignore[union-attr]


def _trial(number: int, value: float, **params: object) -> optuna.trial.FrozenTrial:
    space = {
        "lr": FloatDistribution(1e-4, 1e-1, log=True),
        "layers": IntDistribution(1, 12),
        "kernel": IntDistribution(7, 15, step=2),
        "clip": CategoricalDistribution([None, 1.0, 5.0]),
        "encoder": CategoricalDistribution(["lstm", "conformer"]),
        "fixed": CategoricalDistribution(["a", "b"]),
    }
    trial = optuna.trial.create_trial(
        value=value, params=params, distributions={k: space[k] for k in params}
    )
    trial.number = number
    return trial


# --------------------------------------------------------------------------- section order


def test_results_come_first_and_cost_last() -> None:
    study = make_wide_study(4)
    ids = _section_ids(report_sections(study, param_importances(study), None))
    assert ids == [
        "best",
        "history",
        "learning-curves",
        "trials",
        "importance",
        "parallel",
        "cost",
    ]
    best = report_sections(study, NO_IMPORTANCE, None)[0]
    # The best trial's metric and its searched parameters, in the first section.
    assert "<b>Best trial #0</b>: wer = 1" in best
    assert "<td>optim.lr</td>" in best and "<td>searched</td>" in best


def test_a_study_without_a_complete_trial_says_so_first() -> None:
    study = optuna.create_study()
    sections = report_sections(study, param_importances(study), None)
    assert _section_ids(sections)[:2] == ["best", "history"]
    assert "No trial completed yet" in sections[0] and "no complete trial yet" in sections[1]


# --------------------------------------------------------------------------- importance


def test_importance_is_replaced_by_a_sentence_for_four_tied_trials() -> None:
    importance = param_importances(make_wide_study(4, tied=True))
    assert importance.values == {}
    assert importance.note.startswith(
        f"Parameter importance needs at least {MIN_IMPORTANCE_TRIALS} finished trials with at "
        f"least {MIN_DISTINCT_VALUES} different values of wer; this study has 4 finished trials "
        "with 1 different value."
    )


@pytest.mark.parametrize(
    ("n_complete", "tied", "shown"),
    [
        (MIN_IMPORTANCE_TRIALS - 1, False, False),  # distinct, but one trial short
        (MIN_IMPORTANCE_TRIALS, True, False),  # enough trials, all tied
        (MIN_IMPORTANCE_TRIALS, False, True),  # the threshold exactly
    ],
)
def test_importance_threshold(n_complete: int, tied: bool, shown: bool) -> None:
    importance = param_importances(make_wide_study(n_complete, tied=tied))
    assert bool(importance.values) is shown, importance.note
    assert (importance.note == "") is shown
    if shown:
        assert importance.method == "PED-ANOVA"
        assert set(importance.values) <= set(WIDE_SPACE)


def test_values_equal_to_six_digits_count_as_tied() -> None:
    assert distinct_values([0.15, 0.15 + 1e-12, 0.150001, 0.2]) == 3
    assert distinct_values([]) == 0


# --------------------------------------------------------------------------- parallel coordinates


def test_parallel_coordinates_of_sixteen_parameters_has_at_most_eight_axes() -> None:
    study = make_wide_study(4)
    fig = parallel_figure(study, NO_IMPORTANCE)
    assert fig is not None
    dims = fig.data[0].dimensions
    assert len(dims) <= MAX_AXES == 8
    assert dims[0].label == "wer"
    assert "7 of 16 parameters" in fig.layout.title.text
    for dim in dims[1:]:
        assert dim.ticktext is not None and "None" not in dim.ticktext, dim.label
        # Tick labels line up with tick positions, and every value lies on the axis.
        assert len(dim.ticktext) == len(dim.tickvals)
        assert all(dim.range[0] <= v <= dim.range[1] for v in dim.values), dim.label


def test_most_important_parameters_are_drawn_first() -> None:
    trials = make_wide_study(4).get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    importance = Importance({"model.encoder": 0.7, "optim.lr": 0.2, "model.dropout": 0.1}, "x", "")
    chosen, how = parallel_params(trials, importance, limit=4)
    assert chosen[:3] == ["model.encoder", "optim.lr", "model.dropout"] and len(chosen) == 4
    assert how == "most important first"
    # Without importance: the ones that took most values (floats), in sampled order.
    chosen, how = parallel_params(trials, NO_IMPORTANCE, limit=3)
    assert chosen == ["optim.lr", "optim.weight_decay", "optim.beta2"]
    assert how == "those that varied most"


def test_a_parameter_that_never_changed_gets_no_axis() -> None:
    trials = [_trial(i, 0.1 * i, lr=10 ** -(i + 1), fixed="a") for i in range(3)]
    assert parallel_params(trials, Importance({"fixed": 1.0}, "x", ""))[0] == ["lr"]


def test_inactive_conditional_values_get_a_labelled_slot_not_none() -> None:
    trials = [
        _trial(0, 0.3, encoder="lstm", clip=None),
        _trial(1, 0.2, encoder="conformer", kernel=9, clip=1.0),
        _trial(2, 0.1, encoder="conformer", kernel=15, clip=5.0),
    ]
    kernel = parameter_axis(trials, "kernel")
    assert kernel["ticktext"][0] == INACTIVE and "None" not in kernel["ticktext"]
    assert kernel["values"][0] == kernel["tickvals"][0] == kernel["range"][0]
    assert kernel["values"][0] < 7 <= kernel["values"][1]
    # The int axis is ticked on the parameter's own grid, in whole numbers.
    assert kernel["ticktext"][1:] == ["7", "9", "11", "13", "15"]
    # A `None` choice is a real value: spelled as YAML's null, apart from "not used".
    clip = parameter_axis(trials, "clip")
    assert clip["ticktext"] == ["null", "1.0", "5.0"] and clip["values"] == [0, 1, 2]


def test_numeric_axes_label_the_searched_range_readably() -> None:
    trials = [_trial(0, 0.2, lr=3e-4, layers=1), _trial(1, 0.1, lr=3e-3, layers=12)]
    lr = parameter_axis(trials, "lr")  # log: whole decades of the searched range 1e-4..1e-1
    assert lr["ticktext"] == ["0.0001", "0.001", "0.01", "0.1"]
    layers = parameter_axis(trials, "layers")
    assert all(re.fullmatch(r"\d+", t) for t in layers["ticktext"]), layers["ticktext"]
    assert layers["ticktext"][0] == "1" and layers["ticktext"][-1] == "12"


def test_parallel_coordinates_need_two_trials_that_differ() -> None:
    study = optuna.create_study()
    study.add_trial(_trial(0, 0.1, lr=1e-3))
    assert parallel_figure(study, NO_IMPORTANCE) is None
    study.add_trial(_trial(1, 0.2, lr=1e-3))
    assert parallel_figure(study, NO_IMPORTANCE) is None  # lr never changed
    study.add_trial(_trial(2, 0.3, lr=1e-2))
    assert parallel_figure(study, NO_IMPORTANCE) is not None


# --------------------------------------------------------------------------- integer ticks


@pytest.mark.parametrize(
    ("span", "step"), [(0, 1), (3, 1), (10, 1), (11, 2), (40, 5), (99, 10), (1000, 100)]
)
def test_integer_step(span: float, step: int) -> None:
    assert integer_step(span) == step


def test_integer_axis_settings() -> None:
    axis = integer_axis([0, 1, 2, 3])
    assert axis == {"tickmode": "linear", "tick0": 0, "dtick": 1, "tickformat": "d"}
    assert integer_axis([])["dtick"] == 1


def test_trial_and_epoch_axes_have_whole_number_ticks() -> None:
    study = make_wide_study(4)
    for fig in (history_figure(study), learning_curves_figure(study)):
        assert fig is not None
        assert fig.layout.xaxis.tickmode == "linear" and fig.layout.xaxis.dtick == 1
        assert fig.layout.xaxis.tickformat == "d"
    assert learning_curves_figure(study).layout.xaxis.title.text == "epoch"  # type: ignore[union-attr]


# --------------------------------------------------------------------------- seeds column


def test_std_over_seeds_column_only_when_the_study_ran_several_seeds() -> None:
    single = make_wide_study(4)
    assert not ran_several_seeds(single)
    assert "std over seeds" not in top_trials_table(single)
    assert "std over seeds" not in "".join(report_sections(single, NO_IMPORTANCE, None))
    several = make_wide_study(4, tied=False, seeds=[1, 2])
    assert ran_several_seeds(several)
    table = top_trials_table(several)
    assert "<th>std over seeds</th>" in table and "<td>0.01</td>" in table
    # No spec at all (a command objective): per-seed values on the trials decide.
    bare = optuna.create_study()
    bare.add_trial(optuna.trial.create_trial(value=0.2, user_attrs={"seed_values": [0.1, 0.3]}))
    assert ran_several_seeds(bare) and "std over seeds" in top_trials_table(bare)
