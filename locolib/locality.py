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

Index sets (``inner``/``outer``) are named rings of a k x k matrix (k odd), grouped by the
squared distance d2 = (i - c)^2 + (j - c)^2 from the centre c = (k - 1) / 2:

    d2 = 0 "c" (centre), 1 "n" (4 edge neighbours), 2 "co" (the 4 diagonal neighbours: the
    corners of a 3 x 3), and every further d2 "r" if d2 = r^2 ("2", "3", ...), else "sqrtd2"
    ("sqrt5", "sqrt8", "sqrt10", ...).

For k = 5 that gives the paper's six sets I_c, I_n, I_co, I_2, I_sqrt5, I_sqrt8. Also accepted:
"sqrt<d2>" for any ring (e.g. "sqrt1", "sqrt2", "sqrt4"), "0" and "1", and an explicit
collection of (row, col) positions.

Stars (Table 4's caption): *** p < .001, ** p < .01, * p < .1 -- the paper's thresholds, with no
level at .05. The stars come from a one-sided one-sample t-test of the standardised differences
(H1: their mean is > 0), as Section 7.1 describes; note that under that test a negative m can
never be significant, yet Table 4 stars several negative values (e.g. InceptionV3 -0.05***), so
the paper's stars for those were presumably computed two-sided. ``locality_test`` reports both
p-values; the stars follow the one-sided one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

Position = tuple[int, int]
IndexSpec = str | Collection[Sequence[int]]

# Table 4's two comparisons, in the paper's column order.
TABLE4_PAIRS: tuple[tuple[str, str], ...] = (("c", "n"), ("n", "co"))
PARTS: tuple[str, ...] = ("all", "lower", "upper")


# ----------------------------------------------------------------------------- index sets

def _ring_name(d2: int) -> str:
    special = {0: "c", 1: "n", 2: "co"}
    if d2 in special:
        return special[d2]
    r = math.isqrt(d2)
    return str(r) if r * r == d2 else f"sqrt{d2}"


def rings(k: int) -> dict[str, tuple[Position, ...]]:
    """The canonical ring names of a k x k matrix (k odd), nearest first, with their positions."""
    _check_k(k)
    c = k // 2
    by_d2: dict[int, list[Position]] = {}
    for i in range(k):
        for j in range(k):
            by_d2.setdefault((i - c) ** 2 + (j - c) ** 2, []).append((i, j))
    return {_ring_name(d2): tuple(by_d2[d2]) for d2 in sorted(by_d2)}


def _parse_ring(name: str) -> int | None:
    """Squared distance named by a ring name or alias, None if it is not one."""
    key = name.strip().lower()
    fixed = {"c": 0, "centre": 0, "center": 0, "n": 1, "co": 2}
    if key in fixed:
        return fixed[key]
    if key.isdigit():
        return int(key) ** 2
    if key.startswith("sqrt") and key[4:].isdigit():
        return int(key[4:])
    return None


def _check_k(k: int) -> None:
    if not isinstance(k, (int, np.integer)) or k < 1 or k % 2 == 0:
        raise ValueError(f"matrices must be k x k with k odd (they need a centre), got k = {k!r}")


def index_set(spec: IndexSpec, k: int) -> tuple[Position, ...]:
    """Resolve a ring name (see the module docstring) or explicit positions for a k x k matrix."""
    _check_k(k)
    named = rings(k)
    if isinstance(spec, str):
        d2 = _parse_ring(spec)
        if d2 is None:
            raise ValueError(f"unknown index set {spec!r}; rings of a {k} x {k} matrix are "
                             f"{list(named)} (or pass explicit (row, col) positions)")
        name = _ring_name(d2)
        if name not in named:
            raise ValueError(f"a {k} x {k} matrix has no ring at squared distance {d2} from its "
                             f"centre ({spec!r}); its rings are {list(named)}")
        return named[name]
    positions = tuple(tuple(int(v) for v in p) for p in spec)
    if not positions:
        raise ValueError("an explicit index set must not be empty")
    for p in positions:
        if len(p) != 2 or not all(0 <= v < k for v in p):
            raise ValueError(f"position {p} is not a (row, col) index of a {k} x {k} matrix")
    if len(set(positions)) != len(positions):
        raise ValueError(f"explicit index set {positions} repeats a position")
    return positions  # type: ignore[return-value]


def _mask(spec: IndexSpec, k: int) -> np.ndarray:
    mask = np.zeros((k, k), dtype=bool)
    for p in index_set(spec, k):
        mask[p] = True
    return mask


# ----------------------------------------------------------------------------- data

def as_matrices(layer: Any) -> np.ndarray:
    """One layer as a float64 array (n, k, k): every trailing k x k matrix, leading dims flattened.

    Accepts numpy arrays, torch tensors (any device, with or without grad) and nested lists.
    """
    if hasattr(layer, "detach"):  # torch.Tensor, without importing torch
        layer = layer.detach().cpu().double().numpy()
    a = np.asarray(layer, dtype=np.float64)
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"a layer must have shape (..., k, k) with square k x k matrices, got {a.shape}")
    _check_k(a.shape[-1])
    a = a.reshape(-1, a.shape[-1], a.shape[-1])
    if a.shape[0] == 0:
        raise ValueError("a layer holds no matrices")
    if not np.isfinite(a).all():
        raise ValueError("a layer holds NaN or infinite weights")
    return a


def _layers(layers: Iterable[Any]) -> list[np.ndarray]:
    if isinstance(layers, np.ndarray) or hasattr(layers, "detach"):
        raise TypeError("pass a sequence of layers (e.g. [w1, w2]), not a single array; "
                        "wrap one layer in a list")
    out = [as_matrices(layer) for layer in layers]
    if not out:
        raise ValueError("no layers given")
    ks = sorted({a.shape[-1] for a in out})
    if len(ks) > 1:
        raise ValueError(f"all layers of one call must share k; got k in {ks} (test each k separately)")
    return out


def differences(layers: Iterable[Any], inner: IndexSpec, outer: IndexSpec,
                absolute: bool = False) -> list[np.ndarray]:
    """s(w, I, I') = m(w, I) - m(w, I') for every matrix w, one array per layer."""
    mats = _layers(layers)
    k = mats[0].shape[-1]
    mi, mo = _mask(inner, k), _mask(outer, k)
    out = []
    for a in mats:
        a = np.abs(a) if absolute else a
        out.append(a[:, mi].mean(axis=1) - a[:, mo].mean(axis=1))
    return out


def standardized_differences(layers: Iterable[Any], inner: IndexSpec, outer: IndexSpec,
                             absolute: bool = False) -> list[np.ndarray]:
    """s(w, l, I, I') = s(w, I, I') / sigma(W_l, I, I') per matrix, one array per layer.

    sigma is the population standard deviation (divide by |W_l|) of s over the layer. A layer
    whose s does not vary (e.g. a single matrix, or all matrices alike) cannot be standardised.
    """
    out = []
    for index, s in enumerate(differences(layers, inner, outer, absolute)):
        sigma = s.std(ddof=0)
        # Relative threshold (scale-free): a std that is rounding noise of the values is zero.
        if not (sigma > 0 and sigma > 1e-12 * float(np.abs(s).max())):
            raise ValueError(
                f"layer {index}: s(w, {inner!r}, {outer!r}) has zero standard deviation over its "
                f"{s.size} matrices, so it cannot be standardised"
            )
        out.append(s / sigma)
    return out


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
    """
    z = np.concatenate(standardized_differences(layers, inner, outer, absolute))
    return float(z.mean())


def m_score_literal(layers: Sequence[Any], inner: IndexSpec, outer: IndexSpec,
                    absolute: bool = False) -> float:
    """Eq. 7.1 with its printed denominator read literally: sum_{l, w in W_l} |W_l| = sum_l |W_l|^2."""
    z = standardized_differences(layers, inner, outer, absolute)
    return float(sum(a.sum() for a in z) / sum(a.size ** 2 for a in z))


# ----------------------------------------------------------------------------- the test

def stars(p: float) -> str:
    """Table 4's significance code: *** p < .001, ** p < .01, * p < .1 (the paper's levels)."""
    if not 0 <= p <= 1:
        raise ValueError(f"a p-value lies in [0, 1], got {p}")
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.1 else ""


@dataclass(frozen=True)
class LocalityTest:
    """One cell of Table 4: m(I, I') and the one-sided t-test of the standardised differences."""

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


def _name(spec: IndexSpec) -> str:
    return spec if isinstance(spec, str) else repr(tuple(tuple(p) for p in spec))


def locality_test(layers: Sequence[Any], inner: IndexSpec, outer: IndexSpec,
                  absolute: bool = False) -> LocalityTest:
    """m(I, I') with a one-sided one-sample t-test (scipy, alternative="greater") of s / sigma."""
    from scipy import stats

    z_layers = standardized_differences(layers, inner, outer, absolute)
    z = np.concatenate(z_layers)
    if z.size < 2:
        raise ValueError("the t-test needs at least two matrices")
    greater = stats.ttest_1samp(z, 0.0, alternative="greater")
    two = stats.ttest_1samp(z, 0.0, alternative="two-sided")
    return LocalityTest(inner=_name(inner), outer=_name(outer), absolute=absolute,
                        m=float(z.mean()), t=float(greater.statistic), p=float(greater.pvalue),
                        p_two_sided=float(two.pvalue), n=int(z.size), n_layers=len(z_layers))


def split_halves(layers: Sequence[Any],
                 middle: Literal["upper", "lower"] = "upper") -> tuple[list[Any], list[Any]]:
    """Table 4's lower and upper halves of the layers (input side first).

    The paper does not say where the middle layer of an odd count goes; by default it joins the
    upper half (lower = the first floor(L / 2) layers), ``middle="lower"`` puts it in the lower
    half. Both halves must be non-empty, so at least two layers are needed.
    """
    layers = list(layers)
    if len(layers) < 2:
        raise ValueError(f"splitting into halves needs at least 2 layers, got {len(layers)}")
    if middle not in ("upper", "lower"):
        raise ValueError(f"middle must be 'upper' or 'lower', got {middle!r}")
    cut = len(layers) // 2 + (len(layers) % 2 if middle == "lower" else 0)
    return layers[:cut], layers[cut:]


def table4_row(layers: Sequence[Any], model: str = "model",
               middle: Literal["upper", "lower"] = "upper",
               pairs: Sequence[tuple[IndexSpec, IndexSpec]] = TABLE4_PAIRS, *,
               test: Callable[..., LocalityTest] = locality_test) -> pd.DataFrame:
    """All Table 4 cells of one model, signed and absolute, as a tidy frame.

    Columns: model, absolute, part (all / lower / upper), pair ("m(c,n)" ...), m, t, p,
    p_two_sided, stars, n, n_layers. ``format_table4`` turns it into the paper's layout.
    ``test``: as in :func:`table4_cells`.
    """
    layers = list(layers)
    lower, upper = split_halves(layers, middle)
    return table4_cells(dict(zip(PARTS, (layers, lower, upper))), model, pairs, test=test)


def table4_cells(parts: Mapping[str, Sequence[Any]], model: str = "model",
                 pairs: Sequence[tuple[IndexSpec, IndexSpec]] = TABLE4_PAIRS, *,
                 test: Callable[..., LocalityTest] = locality_test) -> pd.DataFrame:
    """:func:`table4_row`'s frame from the layers of each part (keys: ``PARTS``).

    ``test(layers, inner, outer, absolute)`` tests one cell: by default :func:`locality_test` on
    kernels; ``locolib.inspection`` passes its test on the weight statistics of training records.
    """
    rows = []
    for absolute in (False, True):
        for part in PARTS:
            for inner, outer in pairs:
                r = test(parts[part], inner, outer, absolute)
                rows.append({"model": model, "absolute": absolute, "part": part,
                             "pair": f"m({r.inner},{r.outer})", "m": r.m, "t": r.t, "p": r.p,
                             "p_two_sided": r.p_two_sided, "stars": r.stars, "n": r.n,
                             "n_layers": r.n_layers})
    return pd.DataFrame(rows)


def format_table4(tidy: pd.DataFrame, decimals: int = 3) -> pd.DataFrame:
    """Table 4's layout: one row per (model, absolute), columns (part, pair), cells like 0.118***."""
    cells = tidy.assign(cell=[f"{m:.{decimals}f}{s}" for m, s in zip(tidy["m"], tidy["stars"])])
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
    """The paper's Table 4 as a tidy frame: dataset, model, part, pair, m, stars."""
    rows = []
    for (dataset, model), cells in PAPER_TABLE4.items():
        for (part, pair), cell in zip(((p, q) for p in PARTS for q in ("m(c,n)", "m(n,co)")), cells):
            value = cell.rstrip("*")
            rows.append({"dataset": dataset, "model": model, "part": part, "pair": pair,
                         "m": float(value), "stars": cell[len(value):]})
    return pd.DataFrame(rows)


def conv_kernels(model: Any, k: int = 3) -> list[Any]:
    """The weight tensors of every k x k torch Conv2d of ``model``, in module order (input first).

    Depth-wise convolutions are included (their weight is (out, 1, k, k)). Module order is the
    order of definition, which for sequential networks is the order from input to output.
    """
    from torch import nn

    return [m.weight for m in model.modules()
            if isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (k, k)]
