"""The locality test of the paper's Section 7.1 (Eq. 7.1, Table 4).

For every spatial k x k matrix w of a layer (one per output and input channel of a convolution)
the paper compares the mean weight on an inner index set I with that on an outer set I',

    s(w, I, I') = m(w, I) - m(w, I'),      m(w, I) = mean of w over I,

standardises s by its population standard deviation over the layer, sigma(W_l, I, I'), and
averages the standardised differences s / sigma over every matrix of the network:

    m(I, I') = sum_{l, w in W_l} s(w, I, I') / sigma(W_l, I, I')  /  sum_l |W_l|.

Reading of the denominator. Eq. 7.1 prints it as "sum_{l, w in W_l} |W_l|", which read literally
is sum_l |W_l|^2 (|W_l| added once per matrix). The text says "the mean across all observations",
and only that reading gives Table 4's magnitudes: each layer contributes its mean standardised
difference, an effect size of order 0.01 to 1, weighted by |W_l|. For a VGG16-sized network
(about 1.6 million 3 x 3 matrices) the literal reading divides by a further factor of about
|W_l| ~ 10^5 and gives values of order 10^-6, far from Table 4's 0.005 to 1.09.
``m_score`` therefore uses the number of matrices, sum_l |W_l|; ``m_score_literal`` computes
the literal reading for comparison.

Index sets (``inner``/``outer``) are the rings of a k x k matrix in the grammar of
:mod:`locolib.kernels` ("c", "n", "co", "2", "sqrt5", ...) or explicit (row, col) positions.

One path from kernels and from records. Everything Table 4 needs of a layer is its number of
matrices and the sums of s and s^2 over them (:func:`layer_sums`): they give sigma(W_l), hence the
sum and sum of squares of the standardised differences, and with them m and the t-test. A layer
is either its kernels (an array, tensor or :class:`locolib.kernels.ConvKernel`) or the entry of a
training record that :func:`locolib.kernels.weight_stats` wrote, which stores exactly these sums
for consecutive rings; :func:`locality_test` and :func:`table4_row` take either, so a model and
its record go through the same statistics and give the same numbers (tests/test_locality.py).

Permutation test (beside the paper's t-test; chapter 07): under the null of no spatial
structure the taps of each kernel are exchangeable, so shuffling them within every kernel,
independently, gives m's null distribution without any assumption about how the weights are
distributed (:func:`permutation_test`, and ``permutations=`` in :func:`table4_row`).

Stars (Table 4's caption): *** p < .001, ** p < .01, * p < .1 -- the paper's thresholds, with no
level at .05 (:func:`locolib.kernels.stars`). The stars come from a one-sided one-sample t-test
of the standardised differences (H1: their mean is > 0), as Section 7.1 describes; note that
under that test a negative m can never be significant, yet Table 4 stars several negative values
(e.g. InceptionV3 -0.05***), so the paper's stars for those were presumably computed two-sided.
``locality_test`` reports both p-values; the stars follow the one-sided one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats as st
from sympy.utilities.iterables import multiset_permutations

from locolib.kernels import IndexSpec, check_k, index_mask, ring_names, spec_name, stars
from locolib.stats import holm

# Table 4's two comparisons, in the paper's column order.
TABLE4_PAIRS: tuple[tuple[str, str], ...] = (("c", "n"), ("n", "co"))
PARTS: tuple[str, ...] = ("all", "lower", "upper")
Middle = Literal["upper", "lower"]


# ----------------------------------------------------------------------------- data

def as_matrices(layer: Any) -> np.ndarray:
    """One layer as a float64 array (n, k, k): every trailing k x k matrix, leading dims flattened.

    Accepts numpy arrays, torch tensors (any device, with or without grad), nested lists and
    :class:`locolib.kernels.ConvKernel`. (Chapters 04, 07)
    """
    if hasattr(layer, "detach"):  # torch.Tensor, without importing torch
        layer = layer.detach().cpu().double().numpy()
    a = np.asarray(layer, dtype=np.float64)  # the same object if it is one already
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"a layer must have shape (..., k, k) with square k x k matrices, got {a.shape}")
    check_k(a.shape[-1])
    if a.ndim != 3:
        a = a.reshape(-1, a.shape[-1], a.shape[-1])
    if a.shape[0] == 0:
        raise ValueError("a layer holds no matrices")
    if not np.isfinite(a).all():
        raise ValueError("a layer holds NaN or infinite weights")
    return a


def _is_record(layer: Any) -> bool:
    """Whether ``layer`` is a ``weight_stats`` entry of a training record (not kernels)."""
    return isinstance(layer, Mapping)


def _layer_k(layer: Any) -> int:
    return int(layer["k"]) if _is_record(layer) else int(layer.shape[-1])


def _prepared(layers: Iterable[Any], k: int | None = None) -> list[Any]:
    """Records as they are, kernels as (n, k, k) float64; all of one k (only the k x k ones if
    ``k`` is given)."""
    if isinstance(layers, np.ndarray) or hasattr(layers, "detach"):
        raise TypeError("pass a sequence of layers (e.g. [w1, w2]), not a single array; "
                        "wrap one layer in a list")
    out = [layer if _is_record(layer) else as_matrices(layer) for layer in layers]
    if not out:
        raise ValueError("no layers given")
    sizes = sorted({_layer_k(layer) for layer in out})
    if k is not None:
        out = [layer for layer in out if _layer_k(layer) == k]
        if not out:
            raise ValueError(f"no {k} x {k} layers (kernel sizes are {sizes})")
    elif len(sizes) > 1:
        raise ValueError(f"all layers of one test must share k; the layers have kernel sizes "
                         f"{sizes}: pass k to pick one (test each k separately)")
    return out


def differences(layers: Iterable[Any], inner: IndexSpec, outer: IndexSpec,
                absolute: bool = False) -> list[np.ndarray]:
    """s(w, I, I') = m(w, I) - m(w, I') for every matrix w, one array per layer (kernels only). (Chapter 07)"""
    mats = _prepared(layers)
    if any(_is_record(a) for a in mats):
        raise TypeError("per-matrix differences need kernels; a record keeps only their sums")
    k = mats[0].shape[-1]
    mi, mo = index_mask(inner, k), index_mask(outer, k)
    out = []
    for a in mats:
        a = np.abs(a) if absolute else a
        out.append(a[:, mi].mean(axis=1) - a[:, mo].mean(axis=1))
    return out


def _sigma(n: Any, s1: Any, s2: Any, where: str = "a layer") -> np.ndarray:
    """Population std of s from the count and the sums of s and s^2, checked to be nonzero."""
    n, s1, s2 = (np.asarray(v, dtype=np.float64) for v in (n, s1, s2))
    var = s2 / n - (s1 / n) ** 2
    # Relative threshold (scale-free): a variance that is rounding noise of the values is zero.
    if not np.all((var > 0) & (var > 1e-12 * s2 / n)):
        raise ValueError(f"{where}: s(w, I, I') has zero standard deviation over its matrices "
                         "(zero spread), so it cannot be standardised")
    return np.sqrt(var)


def standardized_differences(layers: Iterable[Any], inner: IndexSpec, outer: IndexSpec,
                             absolute: bool = False) -> list[np.ndarray]:
    """s(w, l, I, I') = s(w, I, I') / sigma(W_l, I, I') per matrix, one array per layer.

    sigma is the population standard deviation (divide by |W_l|) of s over the layer. A layer
    whose s does not vary (e.g. a single matrix, or all matrices alike) cannot be standardised. (Chapter 07; Eq. 7.1)
    """
    return [s / _sigma(s.size, s.sum(), s @ s, f"layer {i}")
            for i, s in enumerate(differences(layers, inner, outer, absolute))]


def m_score(layers: Sequence[Any], inner: IndexSpec, outer: IndexSpec,
            absolute: bool = False) -> float:
    """Eq. 7.1: m(I, I'), the mean of s(w, I, I') / sigma(W_l, I, I') over all matrices.

    ``layers``: one entry per layer, arrays or tensors of shape (..., k, k) (all k x k matrices
    of that layer, e.g. a conv weight (out, in, k, k)); ``absolute`` uses |w|. The denominator is
    the number of matrices sum_l |W_l| (the text's "mean across all observations"); the printed
    denominator read literally, sum_l |W_l|^2, is ``m_score_literal``: for Table 4's networks it
    is smaller by a factor of order 10^4 to 10^5 and cannot give Table 4's 0.005 to 1.09.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> w = rng.normal(size=(64, 32, 3, 3)); w[..., 1, 1] += 1.0   # centre-heavy layer
    >>> round(m_score([w], "c", "n"), 2), m_score_literal([w], "c", "n") < 1e-3
    (0.87, True)

    (Chapter 07; Eq. 7.1)
    """
    z = np.concatenate(standardized_differences(layers, inner, outer, absolute))
    return float(z.mean())


def m_score_literal(layers: Sequence[Any], inner: IndexSpec, outer: IndexSpec,
                    absolute: bool = False) -> float:
    """Eq. 7.1 with its printed denominator read literally: sum_{l, w in W_l} |W_l| = sum_l |W_l|^2.
    (Chapter 07; Eq. 7.1)
    """
    z = standardized_differences(layers, inner, outer, absolute)
    return float(sum(a.sum() for a in z) / sum(a.size ** 2 for a in z))


# ----------------------------------------------------------------------------- layer sums

def ring_pair_index(inner: str, outer: str, k: int) -> int:
    """Position r of the consecutive ring pair (inner, outer) = (ring r, ring r+1) of a k x k
    kernel, as in ``weight_stats``' ``ring_diff_*`` lists: (c, n) -> 0, (n, co) -> 1, ... (Chapter 07)"""
    names = ring_names(k)
    if inner not in names or names.index(inner) + 1 >= len(names) \
            or names[names.index(inner) + 1] != outer:
        pairs = [f"({a},{b})" for a, b in zip(names, names[1:])]
        raise ValueError(f"({inner},{outer}) is not a pair of consecutive rings of a {k} x {k} "
                         f"kernel; weight_stats only hold {', '.join(pairs)}")
    return names.index(inner)


def layer_sums(layer: Any, inner: IndexSpec, outer: IndexSpec,
               absolute: bool = False) -> tuple[int, float, float]:
    """(n, sum of s, sum of s^2) over the n matrices of one layer: all Table 4 needs of it.

    ``layer``: kernels (any index sets), or a ``weight_stats`` entry of a training record, which
    holds these sums for consecutive rings only (see :func:`ring_pair_index`). (Chapter 07)
    """
    if _is_record(layer):
        r = ring_pair_index(inner, outer, int(layer["k"]))  # type: ignore[arg-type]
        tag = "abs_" if absolute else ""
        return (int(layer["count"]), float(layer[f"ring_{tag}diff_sum"][r]),
                float(layer[f"ring_{tag}diff_sq_sum"][r]))
    (s,) = differences([layer], inner, outer, absolute)
    return s.size, float(s.sum()), float(s @ s)


@dataclass(frozen=True)
class LocalityTest:
    """One cell of Table 4: m(I, I') and the one-sided t-test of the standardised differences. (Chapter 07)"""

    inner: str
    outer: str
    absolute: bool
    m: float              # Eq. 7.1 (the mean of the n standardised differences)
    t: float              # one-sample t statistic of the standardised differences against 0
    p: float              # one-sided p-value, H1: mean > 0 (the paper's test)
    p_two_sided: float    # two-sided p-value (what Table 4's stars on negative m suggest)
    n: int                # number of matrices (observations)
    n_layers: int

    @property
    def stars(self) -> str:
        return stars(self.p)

    def __str__(self) -> str:
        return f"{self.m:.3f}{self.stars}"


def locality_test(layers: Sequence[Any], inner: IndexSpec, outer: IndexSpec,
                  absolute: bool = False) -> LocalityTest:
    """m(I, I') with the one-sample t-test of the standardised differences s / sigma.

    ``layers``: kernels, or the ``weight_stats`` entries of a training record (then (inner,
    outer) must be consecutive rings), all of one k. Exact from :func:`layer_sums`: per layer the
    count and the sums of s and s^2 give sigma(W_l), hence the sum and the sum of squares of the
    standardised differences, which is all the mean and the t-test need. (Chapter 07)
    """
    layers = _prepared(layers)
    sums = np.array([layer_sums(layer, inner, outer, absolute) for layer in layers])
    n_l, s1, s2 = sums.T
    sigma = _sigma(n_l, s1, s2, f"a layer of {len(layers)}")
    n, z1, z2 = int(n_l.sum()), float((s1 / sigma).sum()), float((s2 / sigma ** 2).sum())
    if n < 2:
        raise ValueError("the t-test needs at least two matrices")
    mean = z1 / n
    var = max(z2 - n * mean * mean, 0.0) / (n - 1)
    t = mean / math.sqrt(var / n) if var > 0 else math.copysign(math.inf, mean)
    return LocalityTest(inner=spec_name(inner), outer=spec_name(outer), absolute=absolute,
                        m=mean, t=t, p=float(st.t.sf(t, n - 1)),
                        p_two_sided=float(min(1.0, 2 * st.t.sf(abs(t), n - 1))),
                        n=n, n_layers=len(layers))


# ----------------------------------------------------------------------------- permutation test

_TABLE_LIMIT = 5000   # enumerate the distinct tap arrangements of a kernel up to this many
_CHUNK = 1 << 17      # values handled at once: small enough (1 MiB) to stay in the CPU's cache


def _coefficients(k: int, pairs: Sequence[tuple[IndexSpec, IndexSpec]]) -> np.ndarray:
    """(k*k, P): s(w, I, I') = w.ravel() @ C[:, p] for each pair p."""
    c = np.zeros((k * k, len(pairs)))
    for p, (inner, outer) in enumerate(pairs):
        mi, mo = index_mask(inner, k).ravel(), index_mask(outer, k).ravel()
        c[mi, p] += 1 / mi.sum()
        c[mo, p] -= 1 / mo.sum()
    return c


def _arrangements(c: np.ndarray) -> np.ndarray | None:
    """Every distinct order of the rows of ``c`` as (A, k*k, P), or None if there are more than
    ``_TABLE_LIMIT``. Shuffling a kernel's taps uniformly shuffles the rows of ``c`` uniformly,
    and each distinct order is then equally likely (as many permutations give each)."""
    rows, labels = np.unique(c, axis=0, return_inverse=True)
    counts = np.bincount(labels.ravel())
    a = math.factorial(len(c)) // math.prod(math.factorial(int(m)) for m in counts)
    if a > _TABLE_LIMIT:
        return None
    return rows[np.array(list(multiset_permutations(sorted(labels.ravel().tolist()))))]


def _null_sums(x: np.ndarray, c: np.ndarray, table: np.ndarray | None, b: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sums of s and s^2 over one layer's matrices ``x`` (n, k*k) after ``b`` independent
    within-kernel shuffles, signed and on magnitudes: two arrays (b, 2, P)."""
    n, kk = x.shape
    p = c.shape[1]
    s1, s2 = np.zeros((b, 2 * p)), np.zeros((b, 2 * p))
    if table is not None:
        a = len(table)
        flat = table.transpose(1, 0, 2).reshape(kk, a * p)
    step = max(1, _CHUNK // (b * (2 * p if table is not None else kk)))
    for start in range(0, n, step):
        rows = x[start:start + step]
        if table is not None:  # s of every arrangement, then one draw per kernel and shuffle
            s_all = np.concatenate([(rows @ flat).reshape(-1, a, p),
                                    (np.abs(rows) @ flat).reshape(-1, a, p)], axis=2)
            pick = rng.integers(0, a, size=(b, len(rows)))
            pick += np.arange(len(rows)) * a
            s = np.take(s_all.reshape(-1, 2 * p), pick, axis=0)
        else:
            shuffled = rng.permuted(np.broadcast_to(rows, (b, *rows.shape)), axis=2)
            s = np.concatenate([shuffled @ c, np.abs(shuffled) @ c], axis=2)
        s1 += np.einsum("brp->bp", s)
        s2 += np.einsum("brp,brp->bp", s, s)
    return s1.reshape(b, 2, p), s2.reshape(b, 2, p)


def _null_m(parts: Mapping[str, Sequence[np.ndarray]], pairs: Sequence[tuple[IndexSpec, IndexSpec]],
            n_permutations: int, seed: int) -> dict[str, np.ndarray]:
    """m of every part under ``n_permutations`` within-kernel shuffles: part -> (B, 2, P), the
    middle axis signed (0) and magnitudes (1). Each layer is shuffled once per draw, whichever
    parts hold it."""
    layers: dict[int, np.ndarray] = {}
    for part in parts.values():
        for a in part:
            if _is_record(a):
                raise TypeError("the permutation test needs kernels; a record keeps only sums")
            layers.setdefault(id(a), a)
    k = next(iter(layers.values())).shape[-1]
    c = _coefficients(k, pairs)
    table = _arrangements(c)
    rng = np.random.default_rng(seed)
    z, n = {}, {}
    for key, a in layers.items():
        s1, s2 = _null_sums(a.reshape(len(a), -1), c, table, n_permutations, rng)
        with np.errstate(divide="ignore", invalid="ignore"):
            z[key] = s1 / np.sqrt(s2 / len(a) - (s1 / len(a)) ** 2)
        n[key] = len(a)
    return {name: sum(z[id(a)] for a in part) / sum(n[id(a)] for a in part)
            for name, part in parts.items()}


def _perm_p(null: np.ndarray, m: float) -> tuple[float, float]:
    """(one-sided p for m > 0, two-sided p) of the observed ``m`` against draws ``null``,
    counting the observed arrangement itself: (1 + #{null >= m}) / (1 + B)."""
    tol = 1e-12 * max(1.0, abs(m))
    b = len(null)
    greater = (1 + int(np.sum(null >= m - tol))) / (b + 1)
    less = (1 + int(np.sum(null <= m + tol))) / (b + 1)
    return greater, min(1.0, 2 * min(greater, less))


@dataclass(frozen=True)
class PermutationTest:
    """m(I, I') against its null distribution under within-kernel shuffles of the taps. (Chapter 07; Eq. 7.1)"""

    m: float
    p: float              # one-sided, H1: m > 0, as the t-test's p
    p_two_sided: float
    n_permutations: int
    null_mean: float
    null_sd: float

    @property
    def stars(self) -> str:
        return stars(self.p)


def permutation_test(layers: Sequence[Any], inner: IndexSpec, outer: IndexSpec,
                     absolute: bool = False, n_permutations: int = 1000,
                     seed: int = 0) -> PermutationTest:
    """The permutation test of m(I, I') that needs no assumption on the weights' distribution.

    Null hypothesis: no spatial structure, i.e. the taps of each kernel are exchangeable. Each of
    ``n_permutations`` draws shuffles the taps of every kernel independently and recomputes m
    (sigma included); p = (1 + #{draws with m* >= m}) / (1 + draws), so the smallest attainable
    p is 1 / (1 + n_permutations): 1000 draws can reach the paper's *** (p < .001). Seeded and
    vectorised; for 3 x 3 kernels the 630 distinct ways to deal the taps to (c, n, co) are
    enumerated once per kernel and each draw only picks one of them. (Chapter 07; Eq. 7.1)
    """
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    mats = _prepared(layers)
    observed = locality_test(mats, inner, outer, absolute)
    null = _null_m({"all": mats}, [(inner, outer)], n_permutations, seed)["all"][:, int(absolute), 0]
    p, p2 = _perm_p(null, observed.m)
    return PermutationTest(m=observed.m, p=p, p_two_sided=p2, n_permutations=n_permutations,
                           null_mean=float(null.mean()), null_sd=float(null.std(ddof=1))
                           if n_permutations > 1 else math.nan)


# ----------------------------------------------------------------------------- Table 4

def split_halves(layers: Sequence[Any], middle: Middle = "upper") -> tuple[list[Any], list[Any]]:
    """Table 4's lower and upper halves of the layers (input side first).

    The paper does not say where the middle layer of an odd count goes; by default it joins the
    upper half (lower = the first floor(L / 2) layers), ``middle="lower"`` puts it in the lower
    half. Both halves must be non-empty, so at least two layers are needed. (Chapter 07)
    """
    layers = list(layers)
    if len(layers) < 2:
        raise ValueError(f"splitting into halves needs at least 2 layers, got {len(layers)}")
    if middle not in ("upper", "lower"):
        raise ValueError(f"middle must be 'upper' or 'lower', got {middle!r}")
    cut = len(layers) // 2 + (len(layers) % 2 if middle == "lower" else 0)
    return layers[:cut], layers[cut:]


def table4_row(layers: Sequence[Any], model: str = "model", middle: Middle = "upper",
               pairs: Sequence[tuple[IndexSpec, IndexSpec]] = TABLE4_PAIRS, k: int | None = None,
               permutations: int = 0, seed: int = 0) -> pd.DataFrame:
    """All Table 4 cells of one model, signed and absolute, as a tidy frame.

    ``layers``: the model's kernels or its record's ``weight_stats`` (see :func:`locality_test`);
    ``k`` keeps only the k x k layers (needed when there are several kernel sizes). Columns:
    model, absolute, part (all / lower / upper), pair ("m(c,n)" ...), m, t, p, p_two_sided,
    stars, n, n_layers; with ``permutations`` > 0 also p_perm, p_perm_two_sided, stars_perm
    (:func:`permutation_test`, all cells from the same draws; kernels only).
    ``format_table4`` turns it into the paper's layout. (Chapter 07)
    """
    layers = _prepared(layers, k)
    lower, upper = split_halves(layers, middle)
    return table4_cells(dict(zip(PARTS, (layers, lower, upper))), model, pairs,
                        permutations=permutations, seed=seed)


def table4_runs(runs: Sequence[Sequence[Any]], model: str = "model", middle: Middle = "upper",
                pairs: Sequence[tuple[IndexSpec, IndexSpec]] = TABLE4_PAIRS,
                k: int | None = None) -> pd.DataFrame:
    """Table 4 cells for several runs of one network pooled: ``runs`` holds each run's layers
    (its ``weight_stats``, or its kernels). Every run is split into its own lower and upper
    halves, each layer is standardised by its own sigma, and the test then uses all matrices of
    all runs (for one run this is :func:`table4_row`). ``n_layers`` counts layers over all runs. (Chapter 07)
    """
    runs = [_prepared(r, k) for r in runs]
    if not runs:
        raise ValueError("no runs given")
    halves = [split_halves(r, middle) for r in runs]
    parts = {"all": [e for r in runs for e in r],
             "lower": [e for lo, _ in halves for e in lo],
             "upper": [e for _, up in halves for e in up]}
    return table4_cells(parts, model, pairs)


def table4_cells(parts: Mapping[str, Sequence[Any]], model: str = "model",
                 pairs: Sequence[tuple[IndexSpec, IndexSpec]] = TABLE4_PAIRS,
                 permutations: int = 0, seed: int = 0) -> pd.DataFrame:
    """:func:`table4_row`'s frame from the layers of each part (keys: ``PARTS``). (Chapter 07)"""
    parts = {name: _prepared(parts[name]) for name in PARTS}
    null = _null_m(parts, pairs, permutations, seed) if permutations else None
    rows = []
    for absolute in (False, True):
        for part in PARTS:
            for index, (inner, outer) in enumerate(pairs):
                r = locality_test(parts[part], inner, outer, absolute)
                row = {"model": model, "absolute": absolute, "part": part,
                       "pair": f"m({r.inner},{r.outer})", "m": r.m, "t": r.t, "p": r.p,
                       "p_two_sided": r.p_two_sided, "stars": r.stars, "n": r.n,
                       "n_layers": r.n_layers}
                if null is not None:
                    p, p2 = _perm_p(null[part][:, int(absolute), index], r.m)
                    row.update(p_perm=p, p_perm_two_sided=p2, stars_perm=stars(p))
                rows.append(row)
    return pd.DataFrame(rows)


def format_table4(tidy: pd.DataFrame, decimals: int = 3, stars_column: str = "stars") -> pd.DataFrame:
    """Table 4's layout: one row per (model, absolute), columns (part, pair), cells like 0.118***.

    ``stars_column``: "stars" (the t-test's) or "stars_perm" (the permutation test's). (Chapter 07)"""
    cells = tidy.assign(cell=[f"{m:.{decimals}f}{s}" for m, s in zip(tidy["m"], tidy[stars_column])])
    wide = cells.pivot_table(index=["model", "absolute"], columns=["part", "pair"],
                             values="cell", aggfunc="first", sort=False)
    order = [(p, q) for p in PARTS for q in dict.fromkeys(tidy["pair"]) if (p, q) in wide.columns]
    return wide[order]


# The paper's Table 4 (signed weights), for comparison: model -> part -> pair -> (m, stars).
PAPER_TABLE4: Mapping[tuple[str, str], tuple[str, ...]] = {
    ("ImageNet", "VGG16"): ("0.118***", "0.077***", "0.127***", "0.113***", "0.11***", "0.042***"),
    ("ImageNet", "ResNet50"): ("0.069***", "0.21***", "0.026***", "0.21***", "0.112***", "0.211***"),
    ("ImageNet", "InceptionV3"): ("-0.05***", "-0.151***", "0.083***", "0.045***", "-0.184***", "-0.346***"),
    ("ImageNet", "Xception"): ("0.412***", "0.04***", "0.54***", "0.408***", "0.284***", "-0.329***"),
    ("ImageNet", "MobileNet"): ("0.444***", "0.553***", "0.909***", "1.093***", "-0.022", "0.013"),
    ("ImageNet", "DenseNet121"): ("-0.005**", "-0.027***", "0.074***", "0.153***", "-0.085***", "-0.206***"),
    ("CIFAR-100", "VGG13 (Table 3)"): ("0.206***", "0.273***", "0.062***", "0.036***", "0.351***", "0.51***"),
    ("CIFAR-100", "ResNet18"): ("0.164***", "0.219***", "0.106***", "0.142***", "0.222***", "0.296***"),
    ("CIFAR-100", "MobileNet (Table 3)"): ("0.375***", "0.552***", "0.486***", "0.626***", "0.264***", "0.479***"),
}


def paper_table4() -> pd.DataFrame:
    """The paper's Table 4 as a tidy frame: dataset, model, part, pair, m, stars. (Chapter 07)"""
    rows = []
    for (dataset, model), cells in PAPER_TABLE4.items():
        for (part, pair), cell in zip(((p, q) for p in PARTS for q in ("m(c,n)", "m(n,co)")), cells):
            value = cell.rstrip("*")
            rows.append({"dataset": dataset, "model": model, "part": part, "pair": pair,
                         "m": float(value), "stars": cell[len(value):]})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- the book's runs

#: The book's networks under the names of the paper's Table 4 (chapter 07).
BOOK_NETWORKS: dict[str, str] = {"vgg13": "VGG13 (Table 3)", "resnet18": "ResNet18",
                                 "mobilenet": "MobileNet (Table 3)"}

#: The paper's counts for its 20 CIFAR-100 VGG13 networks with 5 x 5 kernels (Section 7.1).
PAPER_5X5: dict[str, str] = {"m(c,n)": "20/20 > 0 (p < .001)", "m(n,co)": "20/20 > 0 (p < .001)",
                             "m(co,2)": "14/20 > 0 (p < .01)", "m(2,sqrt5)": "14/20 > 0 (p < .01)",
                             "m(sqrt5,sqrt8)": "< 0 in 3 runs"}


def table4_of_records(records: Sequence[Mapping[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Chapter 07's Table 4 of training records: (pooled, per_run) tidy frames.

    ``pooled``: per dataset, network and regulariser the runs pooled (:func:`table4_runs`),
    labelled like the paper's rows ("digits VGG13 (Table 3) L2"), with a ``runs`` column;
    ``per_run``: every run on its own (:func:`table4_row`) with its ``seed``. Both carry
    dataset, network and regularizer columns. (Chapter 07)
    """
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for r in records:
        c = r["config"]
        groups.setdefault((c["dataset"], c["network"], c["regularizer"]), []).append(r)
    pooled, per_run = [], []
    for (dataset, network, reg), recs in groups.items():
        label = f"{dataset} {BOOK_NETWORKS.get(network, network)} {reg.upper()}"
        keys = dict(dataset=dataset, network=network, regularizer=reg)
        pooled.append(table4_runs([r["weight_stats"] for r in recs], label).assign(**keys, runs=len(recs)))
        per_run += [table4_row(r["weight_stats"], label).assign(**keys, seed=r["config"]["seed"])
                    for r in recs]
    return pd.concat(pooled, ignore_index=True), pd.concat(per_run, ignore_index=True)


def significant_runs(per_run: pd.DataFrame, alpha: float = 0.01) -> pd.DataFrame:
    """Chapter 07: per network, regulariser, reading and cell, how many single runs have m > 0
    with p < ``alpha``, as "significant/runs" in Table 4's layout. (Chapter 07)"""
    count = (per_run.assign(sig=(per_run.m > 0) & (per_run.p < alpha))
             .groupby(["network", "regularizer", "absolute", "part", "pair"], sort=False)
             .agg(runs=("sig", "size"), significant=("sig", "sum")))
    cells = [f"{s}/{n}" for s, n in zip(count.significant, count.runs)]
    return count.assign(cell=cells)["cell"].unstack(["part", "pair"])


def ring_pairs_per_run(records: Sequence[Mapping[str, Any]], k: int = 5) -> pd.DataFrame:
    """Chapter 07: for each run, m of every pair of consecutive rings of its k x k layers,
    signed and on magnitudes, with both p-values and the run's test error (%). (Chapter 07)"""
    names = ring_names(k)
    rows = []
    for rec in records:
        layers = [e for e in rec["weight_stats"] if int(e["k"]) == k]
        for absolute in (False, True):
            for inner, outer in zip(names, names[1:]):
                r = locality_test(layers, inner, outer, absolute)
                rows.append({"seed": rec["config"]["seed"],
                             "test error %": round(100 * rec["final"]["test_error"], 1),
                             "absolute": absolute, "pair": f"m({inner},{outer})", "m": r.m,
                             "p": r.p, "p_two_sided": r.p_two_sided, "cell": str(r)})
    return pd.DataFrame(rows)


def count_ring_pairs(rows: pd.DataFrame) -> pd.DataFrame:
    """Chapter 07: :func:`ring_pairs_per_run` counted as in the paper's paragraph on its 5 x 5
    networks: runs with m > 0 and p < .01, runs with m < 0 (and of those, two-sided p < .1),
    the mean m, and the paper's count (:data:`PAPER_5X5`). (Chapter 07)"""
    count = (rows.assign(pos_sig=(rows.m > 0) & (rows.p < 0.01), neg=rows.m < 0,
                         neg_sig=(rows.m < 0) & (rows.p_two_sided < 0.1))
             .groupby(["absolute", "pair"], sort=False)
             .agg(runs=("m", "size"), positive_p_01=("pos_sig", "sum"), negative=("neg", "sum"),
                  negative_p2_1=("neg_sig", "sum"), mean_m=("m", "mean")))
    count["paper (CIFAR-100, 20 runs)"] = [PAPER_5X5.get(p, "") for _, p in count.index]
    return count


def side_by_side(ours: Sequence[tuple[str, pd.DataFrame]], decimals: int = 3) -> pd.DataFrame:
    """Chapter 07: the paper's Table 4 rows, then ours in the same layout. ``ours``: (prefix,
    tidy frame) pairs; each (model, reading) of a frame becomes a row "prefix model (|w|)" or
    "prefix model (signed)", in the order given (rows whose frame lacks a pair are blank there). (Chapter 07)"""
    paper = paper_table4()
    wide = paper.assign(cell=[f"{m:g}{s}" for m, s in zip(paper.m, paper.stars)]).pivot_table(
        index=["dataset", "model"], columns=["part", "pair"], values="cell", aggfunc="first", sort=False)
    wide.index = [f"paper: {d} {m}" for d, m in wide.index]
    frames = [wide]
    for prefix, tidy in ours:
        w = format_table4(tidy[tidy.pair.isin(wide.columns.get_level_values("pair"))], decimals)
        w.index = [f"{prefix}{m} ({'|w|' if a else 'signed'})" for m, a in w.index]
        frames.append(w)
    side = pd.concat(frames)
    side.columns = pd.MultiIndex.from_tuples(list(side.columns), names=["part", "pair"])
    return side.fillna("")


def upper_exceeds_lower(tidy: pd.DataFrame, by: str = "network") -> dict[str, bool]:
    """Chapter 07: per ``by`` group of a tidy Table 4 frame, whether the upper half's m exceeds
    the lower half's for every pair. (Chapter 07)"""
    out = {}
    for name, g in tidy.groupby(by, sort=False):
        piv = g.pivot_table(index="part", columns="pair", values="m")
        out[name] = bool((piv.loc["upper"] > piv.loc["lower"]).all())
    return out


# ----------------------------------------------------------------------------- effect sizes by network

#: The magnitude ratios of chapter 07: mean |w| of the centre over the edge neighbours, and of the
#: edge neighbours over the corners (1: no locality; 1.2: the inner ring 20% heavier).
RATIOS: tuple[tuple[str, str], ...] = TABLE4_PAIRS


def tap_magnitudes(layer: Any) -> np.ndarray:
    """k x k array: the mean |w| at each position over the layer's matrices, from kernels or from
    a record's ``weight_stats`` entry (its ``tap_abs_sum`` over ``count``). (Chapters 04, 07)"""
    if _is_record(layer):
        return np.asarray(layer["tap_abs_sum"], dtype=np.float64) / int(layer["count"])
    return np.abs(as_matrices(layer)).mean(axis=0)


def magnitude_ratios(layers: Sequence[Any]) -> pd.DataFrame:
    """Chapter 07: one row per layer (kernels or record entries; 1-based ``layer`` in the order
    given) with ``k``, ``matrices`` and the ratios of :data:`RATIOS`, e.g. ``c/n`` = mean |w| of
    the centre taps / mean |w| of the edge-neighbour taps over the layer's matrices. Unlike m of
    Eq. 7.1 (a standardised difference whose significance grows with the number of kernels),
    a ratio says how much heavier the inner ring is, whatever the layer's size. (Chapters 04, 07)"""
    rows = []
    for i, layer in enumerate(layers):
        taps = tap_magnitudes(layer)
        k = taps.shape[0]
        ring = {name: float(taps[index_mask(name, k)].mean()) for pair in RATIOS for name in pair}
        rows.append({"layer": i + 1, "k": k,
                     "matrices": int(layer["count"]) if _is_record(layer) else len(as_matrices(layer)),
                     **{f"{a}/{b}": ring[a] / ring[b] for a, b in RATIOS}})
    return pd.DataFrame(rows)


def network_effects(ratios: pd.DataFrame, by: Sequence[str], confidence: float = 0.95,
                    n_resamples: int = 9999, seed: int = 0, min_layers: int = 3) -> pd.DataFrame:
    """Chapter 07: per group ``by`` of :func:`magnitude_ratios` rows (a network, or a network's
    layer group), the geometric mean of each ratio over its layers with a seeded percentile
    bootstrap interval over the layers (:func:`scipy.stats.bootstrap` on the log ratios; NaN
    with fewer than ``min_layers`` layers). Columns: ``n_layers``, and per ratio ``c/n``,
    ``c/n low``, ``c/n high`` (likewise ``n/co``). (Chapter 07)"""
    rows = []
    for key, g in ratios.groupby(list(by), sort=False):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)), n_layers=len(g))
        for a, b in RATIOS:
            name = f"{a}/{b}"
            logs = np.log(g[name].to_numpy(float))
            low = high = math.nan
            if len(logs) >= min_layers and np.ptp(logs) > 0:
                ci = st.bootstrap((logs,), np.mean, confidence_level=confidence, method="percentile",
                                  n_resamples=n_resamples, rng=np.random.default_rng(seed)).confidence_interval
                low, high = math.exp(ci.low), math.exp(ci.high)
            row.update({name: math.exp(logs.mean()), f"{name} low": low, f"{name} high": high})
        rows.append(row)
    return pd.DataFrame(rows).set_index(list(by))


def compare_groups(values: pd.Series, groups: pd.Series, first: str, second: str,
                   confidence: float = 0.95) -> dict[str, float]:
    """Chapter 07: two groups of networks compared with the networks as replicates.

    ``values``: one ratio per network (e.g. its geometric mean c/n of :func:`network_effects`);
    ``groups``: each network's group. Returns the networks per group, each group's geometric
    mean ratio, ``ratio`` (first over second) with the Welch ``confidence`` interval on the log
    scale, and the exact two-sided permutation p of the difference of mean log ratios over every
    relabelling of the networks (:func:`scipy.stats.permutation_test`), with the smallest p
    that relabelling can give at all (``p_floor``: with 3 networks a group it is 0.1). (Chapter 07)
    """
    logs = np.log(values.to_numpy(float))
    x, y = logs[(groups == first).to_numpy()], logs[(groups == second).to_numpy()]
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"each group needs at least two networks; {first!r} has {len(x)}, "
                         f"{second!r} has {len(y)}")
    welch = st.ttest_ind(x, y, equal_var=False)
    ci = welch.confidence_interval(confidence)
    perm = st.permutation_test((x, y), lambda a, b, axis: np.mean(a, axis=axis) - np.mean(b, axis=axis),
                               permutation_type="independent", n_resamples=math.inf,
                               alternative="two-sided", vectorized=True)
    return {f"n {first}": len(x), f"n {second}": len(y), first: math.exp(x.mean()),
            second: math.exp(y.mean()), "ratio": math.exp(x.mean() - y.mean()),
            "ratio low": math.exp(ci.low), "ratio high": math.exp(ci.high),
            "p_welch": float(welch.pvalue), "p_permutation": float(perm.pvalue),
            "p_floor": 2 / math.comb(len(x) + len(y), len(x))}


def layer_tests(layers: Sequence[Any], absolute: bool = True, permutations: int = 0,
                seed: int = 0) -> pd.DataFrame:
    """Chapter 07: the paper's t-test and, with ``permutations`` > 0, the permutation test of
    m(c,n) and m(n,co) for every layer on its own (1-based ``layer``), as descriptions of how
    consistently that layer's matrices lean one way: with thousands of matrices a small m is
    already p < .001, so these p-values say nothing about the network as a unit. (Chapter 07)"""
    mats = _prepared(layers)
    null = (_null_m({str(i): [a] for i, a in enumerate(mats)}, RATIOS, permutations, seed)
            if permutations else None)
    rows = []
    for i, a in enumerate(mats):
        for j, (inner, outer) in enumerate(RATIOS):
            r = locality_test([a], inner, outer, absolute)
            row = {"layer": i + 1, "pair": f"m({inner},{outer})", "matrices": r.n, "m": r.m, "p": r.p}
            if null is not None:
                row["p_perm"] = _perm_p(null[str(i)][:, int(absolute), j], r.m)[0]
            rows.append(row)
    return pd.DataFrame(rows)


def paired_layer_contrast(layers: pd.DataFrame, arm: str, first: str, second: str,
                          confidence: float = 0.95) -> pd.DataFrame:
    """Chapter 07's padding study: per network, layer and ratio of :data:`RATIOS`, runs with
    ``layers[arm] == first`` against runs with ``== second`` of the same network and seed.

    ``layers``: rows of :func:`locolib.inspection.run_layers` (columns network, seed, layer, map,
    the ratios and ``arm``). Per layer and ratio: the number of pairs, each arm's geometric mean,
    ``change`` = exp(mean paired difference of the log ratios) (first over second: 1.10 means
    the ratio is 10% larger under ``first``) with its t ``confidence`` interval, the two-sided
    paired t-test's ``p`` and ``p_holm``, Holm-adjusted over the layers of that ratio
    (:func:`locolib.stats.holm`) over the layers of that network and ratio. (Chapter 07)
    """
    rows = []
    for (network, layer, size), g in layers.groupby(["network", "layer", "map"], sort=True):
        for a, b in RATIOS:
            name = f"{a}/{b}"
            wide = g.pivot_table(index="seed", columns=arm, values=name).dropna(subset=[first, second])
            if len(wide) < 2:
                raise ValueError(f"{network}, layer {layer}: {len(wide)} complete pair(s) of {first!r} and "
                                 f"{second!r}; train the missing runs first")
            d = np.log(wide[first].to_numpy(float)) - np.log(wide[second].to_numpy(float))
            res = st.ttest_1samp(d, 0.0)
            ci = res.confidence_interval(confidence)
            rows.append({"network": network, "layer": layer, "map": size, "ratio": name, "pairs": len(d),
                         first: math.exp(np.log(wide[first]).mean()),
                         second: math.exp(np.log(wide[second]).mean()),
                         "change": math.exp(d.mean()), "change low": math.exp(ci.low),
                         "change high": math.exp(ci.high), "p": float(res.pvalue)})
    out = pd.DataFrame(rows)
    out["p_holm"] = out.groupby(["network", "ratio"])["p"].transform(lambda p: holm(p.to_numpy()))
    return out
