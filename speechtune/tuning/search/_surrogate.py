"""A random-forest surrogate and expected improvement: how ``speechtune`` proposes new configs.

SMAC's recipe (Hutter et al., 2011; Lindauer et al., 2022), which measured ahead of TPE/KDE
models on the YAHPO surrogates and the synthetic functions of ``benchmarks/search_efficiency.py``
(docs/benchmarks.md): a random forest of configs -> value, its spread across trees as the
uncertainty, and expected improvement maximised over random configs plus local moves around the
best configs seen, then, in a conditional space, a local search that moves one param at a time
(:meth:`ForestModel._climb`). The forest is scikit-learn's; everything speech-specific (which
rung the model is fitted on, rung trust, priors) stays in the engine.

Encoding: a numeric param is its position in ``[0, 1]`` (in log space when ``log``), a
categorical one column per choice; a param whose ``when`` does not hold is ``-1`` (numeric) or
all zeros (categorical), so the trees can split active from inactive. Values are replaced by
their normal scores (rank-based), which makes the model indifferent to the objective's scale and
to outliers (a diverged run, a failed one ranked last).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import norm

from speechtune.tuning.space import (
    CategoricalParam,
    ConstraintViolation,
    FloatParam,
    IntParam,
    SearchSpace,
)

__all__ = ["ForestModel", "SpaceEncoder", "expected_improvement", "normal_scores"]

INACTIVE = -1.0


class SpaceEncoder:
    """Turns raw params (as the engine stores them) into fixed-length feature vectors."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self._columns: list[tuple[str, Any]] = []  # (param name, the choice for one-hot columns)
        for name in space.tunable_names():
            param = space.params[name]
            if isinstance(param, CategoricalParam):
                self._columns += [(name, c) for c in param.encoded()]
            else:
                self._columns.append((name, None))

    @property
    def width(self) -> int:
        """Number of features."""
        return len(self._columns)

    def encode(self, params: Mapping[str, Any]) -> np.ndarray:
        """One feature vector for one config's raw params."""
        out = np.empty(self.width)
        for i, (name, choice) in enumerate(self._columns):
            value = params.get(name)
            param = self.space.params[name]
            if isinstance(param, CategoricalParam):
                out[i] = 1.0 if value is not None and value == choice else 0.0
            elif value is None:
                out[i] = INACTIVE
            else:
                out[i] = _unit(param, value)  # type: ignore[arg-type]
        return out

    def encode_many(self, many: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Feature rows for many configs (shape ``(len(many), width)``)."""
        if not many:
            return np.empty((0, self.width))
        return np.stack([self.encode(p) for p in many])


def _unit(param: FloatParam | IntParam, value: Any) -> float:
    lo, hi, v = float(param.low), float(param.high), float(value)
    if param.log:
        lo, hi, v = math.log(lo), math.log(hi), math.log(max(v, float(param.low)))
    return 0.0 if hi <= lo else min(1.0, max(0.0, (v - lo) / (hi - lo)))


def normal_scores(values: Sequence[float]) -> np.ndarray:
    """Values as normal scores of their ranks (ties share a score); ``inf`` (failed) ranks last."""
    from scipy.stats import rankdata

    y = np.asarray(values, dtype=float)
    finite = np.isfinite(y)
    if finite.any():
        y = np.where(finite, y, np.max(y[finite]) + 1.0)
    ranks = rankdata(y, method="average")
    return np.asarray(norm.ppf((ranks - 0.5) / len(y)))


def _tree_predictions(forest: Any, x: np.ndarray) -> np.ndarray:
    """Each tree's prediction for each row, shape ``(trees, rows)``.

    The rows are converted to the trees' float32 once here instead of checked again by every
    tree: the same numbers, 4-8x faster on the 8-500 rows scored at once (one fit's candidates,
    then up to ten local-search steps).
    """
    rows = np.ascontiguousarray(x, dtype=np.float32)
    return np.stack([tree.predict(rows, check_input=False) for tree in forest.estimators_])


def expected_improvement(mean: np.ndarray, std: np.ndarray, best: float) -> np.ndarray:
    """EI below ``best`` (minimisation) of a normal with ``mean`` and ``std`` per candidate."""
    std = np.maximum(std, 1e-9)
    z = (best - mean) / std
    return np.asarray((best - mean) * norm.cdf(z) + std * norm.pdf(z))


class ForestModel:
    """A random forest fitted on observed configs; proposes configs by expected improvement.

    Args:
        space: the search space.
        seed: seeds the forest.
        n_trees: trees in the forest.
        min_samples_leaf: leaf size (larger: smoother, less confident).
        max_features: share of the features each split considers.
    """

    def __init__(
        self,
        space: SearchSpace,
        seed: int,
        *,
        n_trees: int = 24,
        min_samples_leaf: int = 2,
        max_features: float = 0.8,
    ) -> None:
        self.encoder = SpaceEncoder(space)
        self.seed = int(seed)
        self.n_trees = n_trees
        self.min_samples_leaf = min_samples_leaf
        self.max_features = max_features
        self._forest: Any = None
        self._best = math.inf
        self._params: list[Mapping[str, Any]] = []
        self._scores = np.empty(0)

    def fit(self, params: Sequence[Mapping[str, Any]], values: Sequence[float]) -> None:
        """Fit on ``params`` (raw) and their ``values`` (lower is better; inf = failed)."""
        from sklearn.ensemble import RandomForestRegressor

        x = self.encoder.encode_many(params)
        y = normal_scores(values)
        self._forest = RandomForestRegressor(
            n_estimators=self.n_trees,
            min_samples_leaf=self.min_samples_leaf,
            max_features=self.max_features,
            bootstrap=True,
            random_state=self.seed,
            n_jobs=1,
        ).fit(x, y)
        self._best = float(np.min(y))
        self._params = list(params)
        self._scores = y

    def predict(self, params: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """Mean and spread (std across trees) of the normal score for each config."""
        if self._forest is None:
            raise RuntimeError("ForestModel.predict before fit")
        per_tree = _tree_predictions(self._forest, self.encoder.encode_many(params))
        return per_tree.mean(axis=0), per_tree.std(axis=0)

    def choice_bests(self) -> list[int]:
        """Indices (into the fitted configs) of the best config with each choice of each
        categorical param, best first, without repeats."""
        best: dict[tuple[str, str], int] = {}
        for name in self.encoder.space.tunable_names():
            if not isinstance(self.encoder.space.params[name], CategoricalParam):
                continue
            for i, params in enumerate(self._params):
                if params.get(name) is None:
                    continue  # inactive here
                key = (name, repr(params[name]))
                if key not in best or self._scores[i] < self._scores[best[key]]:
                    best[key] = i
        return sorted(set(best.values()), key=lambda i: (self._scores[i], i))

    def ranked_candidates(
        self,
        rng: np.random.Generator,
        draw_random: Callable[[np.random.Generator], tuple[dict[str, Any], dict[str, Any]]],
        draw_near: Callable[
            [Mapping[str, Any], np.random.Generator, float], tuple[dict[str, Any], dict[str, Any]]
        ],
        draw_neighbour: Callable[
            [Mapping[str, Any], np.random.Generator], tuple[dict[str, Any], dict[str, Any]]
        ]
        | None = None,
        *,
        n_random: int = 250,
        n_local: int = 250,
        n_centres: int = 8,
        scales: Sequence[float] = (0.02, 0.05, 0.1, 0.2),
        n_starts: int = 10,
        n_neighbours: int = 8,
        max_steps: int = 10,
    ) -> list[tuple[float, dict[str, Any], dict[str, Any]]]:
        """Candidates sorted by expected improvement, best first: ``(ei, params, config)``.

        ``n_random`` uniform draws and ``n_local`` moves around centres at several ``scales``.
        The centres are the ``n_centres`` best observed configs and the best config of every
        choice of every categorical param (:meth:`choice_bests`): small moves rarely change a
        categorical, so with the best configs alone the local search refines one branch of a
        conditional space (one booster, one encoder type) and never the best of the others.
        With ``draw_neighbour`` (a one-exchange move, e.g. :func:`sample_neighbour`), a local
        search on expected improvement follows (:meth:`_climb`).
        """
        order = [int(i) for i in np.argsort(self._scores, kind="stable")[:n_centres]]
        order += [i for i in self.choice_bests() if i not in order]
        centres = [self._params[i] for i in order]
        drawn: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for _ in range(n_random):
            drawn.append(draw_random(rng))
        for k in range(n_local if centres else 0):
            centre = centres[k % len(centres)]
            drawn.append(draw_near(centre, rng, scales[(k // len(centres)) % len(scales)]))
        mean, std = self.predict([p for p, _ in drawn])
        ei = expected_improvement(mean, std, self._best)
        if draw_neighbour is not None:
            drawn, ei = self._climb(
                rng,
                drawn,
                ei,
                centres,
                draw_neighbour,
                n_starts=n_starts,
                n_neighbours=n_neighbours,
                max_steps=max_steps,
            )
        ranked = np.argsort(-ei, kind="stable")
        return [(float(ei[i]), drawn[i][0], drawn[i][1]) for i in ranked]

    def _climb(
        self,
        rng: np.random.Generator,
        drawn: list[tuple[dict[str, Any], dict[str, Any]]],
        ei: np.ndarray,
        centres: Sequence[Mapping[str, Any]],
        draw_neighbour: Callable[
            [Mapping[str, Any], np.random.Generator], tuple[dict[str, Any], dict[str, Any]]
        ],
        *,
        n_starts: int,
        n_neighbours: int,
        max_steps: int,
    ) -> tuple[list[tuple[dict[str, Any], dict[str, Any]]], np.ndarray]:
        """SMAC's local search on expected improvement: ``drawn`` and ``ei`` extended by every
        neighbour it scored.

        Starts: the ``n_starts`` best-ranked candidates and the ``centres``. Each step draws
        ``n_neighbours`` one-exchange neighbours of every start still climbing (all in one
        forest prediction) and moves the start to its best one while that raises EI; a start
        whose neighbours do not stops. One param at a time is what lets a climb walk into a
        narrow region one move of all params together rarely hits: on rbv2_xgboost/1501 the
        best region is the `dart` booster with a near-zero drop rate and many rounds, which no
        uniform draw of `dart` comes near (docs/benchmarks.md).
        """
        top = np.argsort(-ei, kind="stable")[:n_starts]
        current = [drawn[int(i)][0] for i in top]
        current_ei = [float(ei[int(i)]) for i in top]
        if centres:
            mean, std = self.predict(centres)
            current += [dict(c) for c in centres]
            current_ei += [float(e) for e in expected_improvement(mean, std, self._best)]
        pool = list(drawn)
        pool_ei = [ei]
        climbing = list(range(len(current)))
        for _ in range(max_steps):
            batch: list[tuple[dict[str, Any], dict[str, Any]]] = []
            owners: list[int] = []
            for j in climbing:
                for _ in range(n_neighbours):
                    try:
                        batch.append(draw_neighbour(current[j], rng))
                    except ConstraintViolation:
                        continue
                    owners.append(j)
            if not batch:
                break
            mean, std = self.predict([p for p, _ in batch])
            scores = expected_improvement(mean, std, self._best)
            pool += batch
            pool_ei.append(scores)
            owner = np.asarray(owners)
            still = []
            for j in climbing:
                mine = np.flatnonzero(owner == j)
                if not len(mine):
                    continue
                best = int(mine[np.argmax(scores[mine])])
                if scores[best] > 0 and scores[best] > current_ei[j] * (1 + 1e-9):
                    current[j], current_ei[j] = batch[best][0], float(scores[best])
                    still.append(j)
            climbing = still
        return pool, np.concatenate(pool_ei)
