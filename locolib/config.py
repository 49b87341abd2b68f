"""One training run's settings, :class:`RunConfig`: the single place that lists its fields.

Every field carries metadata, and everything else that lists fields is derived from it:

* ``help``: the sweep CLI's help text (:func:`locolib.sweep.build_parser` makes one option per
  field with ``cli=True``, with the field's default and choices);
* ``hashed``: whether the field changes what a run computes. A run's key hashes only the hashed
  fields that differ from their defaults, plus :data:`TRAINING_VERSION`. So adding a field with
  a default leaves every existing key unchanged; changing training semantics means raising
  :data:`TRAINING_VERSION`, which changes every key (old records are then not reused);
* ``column``: shown as a column of :func:`locolib.results.load_results`;
* ``protocol``: must agree between the arms of one comparison (:mod:`locolib.stats`);
* ``bounds``: for a number, the interval it must lie in, e.g. ``"[0, 1)"`` (an open end at
  ``inf`` refuses infinity; NaN lies in no interval). :func:`check_value` is the one check, of
  :class:`RunConfig` and of the sweep's options;
* ``parse``: how the sweep's command line reads the field's text where its default does not say
  (default: the type of the default), e.g. one number or a comma-separated list for ``gamma``.

Adding a field is one line here; give it a default that reproduces the old behaviour.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from locolib.models import PADDING_MODES
from locolib.reg import REGULARIZER_REGISTRY

__all__ = [
    "RunConfig",
    "TRAINING_VERSION",
    "PAPER_EPOCHS",
    "PAPER_MILESTONE_EPOCHS",
    "PAPER_MILESTONES",
    "REGULARIZERS",
    "INITS",
    "KEY_FIELDS",
    "LOCO_DEFAULT",
    "config_fields",
    "field_default",
    "field_info",
    "config_field",
    "check_value",
]

#: Raised whenever a change to the training code changes what a run computes for the same
#: config; it enters every run's key. (2: keys hash only non-default fields.)
TRAINING_VERSION = 2

PAPER_EPOCHS = 250
PAPER_MILESTONE_EPOCHS = (70, 140, 190, 230, 245)
#: The paper's decay epochs as fractions of its 250 epochs.
PAPER_MILESTONES: tuple[float, ...] = tuple(e / PAPER_EPOCHS for e in PAPER_MILESTONE_EPOCHS)
#: The two arms a sweep trains by default (:data:`locolib.reg.REGULARIZER_REGISTRY` has them all).
REGULARIZERS = ("l2", "loco")
INITS = ("torch", "keras")
#: LOCO-REG's parameters where a sweep names the ``loco`` arm without any: regularize the centre
#: half and the corners twice as strongly as the edge neighbours (the book's fixed LOCO-REG).
LOCO_DEFAULT: dict[str, float] = {"gamma": 0.5, "eta": 2.0}
#: Fields spelled out in a run's key (the rest is hashed).
KEY_FIELDS = ("dataset", "network", "regularizer", "seed")

PerLayer = float | tuple[float, ...]


def _parse_per_layer(text: str) -> PerLayer:
    """One positive number, or a comma-separated list of them (one per spatial layer)."""
    vals = [float(v) for v in text.split(",") if v.strip()]
    if not vals or any(not (v > 0 and math.isfinite(v)) for v in vals):
        raise ValueError(f"{text!r}: expected a positive number or a comma-separated list of them")
    return vals[0] if len(vals) == 1 else tuple(vals)


def config_field(default: Any = dataclasses.MISSING, help: str = "", *, hashed: bool = True,
       column: bool = False, protocol: bool = False, cli: bool = True,
       choices: tuple | None = None, bounds: str | None = None,
       parse: Callable[[str], Any] | None = None) -> Any:
    """A :class:`RunConfig` field with its metadata (``help``, ``hashed``, ``column``, ``protocol``,
    ``cli``, ``choices``, ``bounds``, ``parse``; CONTRIBUTING.md). (Chapters 04-07)"""
    meta = {"help": help, "hashed": hashed, "column": column, "protocol": protocol, "cli": cli,
            "choices": choices, "bounds": bounds, "parse": parse}
    if isinstance(default, tuple) and default:
        return field(default_factory=lambda d=default: d, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run (defaults: the paper's protocol, Section 7).

    ``gamma``/``eta``: LOCO-REG parameters, floats or one value per spatial convolution in
    module order (Table 6); must be 1 for ``regularizer="l2"``. ``milestones``: learning-rate
    decay points as fractions of ``epochs`` (see :func:`locolib.train.milestone_epochs`). (Chapters 04-07)
    """

    dataset: str = config_field(help="dataset name (locolib.data.DATASETS)", column=True, cli=False)
    network: str = config_field(help="network name (locolib.models.NETWORKS)", column=True, cli=False)
    regularizer: str = config_field(help="a name in locolib.reg.REGULARIZER_REGISTRY", column=True,
                               cli=False)
    seed: int = config_field(help="seed of initialisation, batch order and augmentation", column=True,
                   cli=False, bounds="[0, inf)")
    gamma: PerLayer = config_field(1.0, "LOCO-REG centre weight: one number or one per spatial conv layer",
                         column=True, parse=_parse_per_layer)
    eta: PerLayer = config_field(1.0, "LOCO-REG corner weight: one number or one per spatial conv layer",
                       column=True, parse=_parse_per_layer)
    lam: float = config_field(5e-4, "L2 strength (TensorFlow's: gradient 2 * lam * w)", column=True,
                    protocol=True, bounds="[0, 100]")
    epochs: int = config_field(PAPER_EPOCHS, "training epochs", column=True, protocol=True,
                               bounds="[1, 100000]")
    batch_size: int = config_field(128, "batch size", column=True, protocol=True,
                                   bounds="[1, 1000000]")
    lr: float = config_field(0.1, "initial learning rate", column=True, protocol=True,
                             bounds="(0, 10]")
    momentum: float = config_field(0.9, "SGD momentum", protocol=True, bounds="[0, 1)")
    lr_decay: float = config_field(0.316, "learning-rate factor at each milestone", protocol=True,
                                   bounds="(0, 1]")
    milestones: tuple[float, ...] = config_field(PAPER_MILESTONES, "decay points as fractions of epochs",
                                       protocol=True, cli=False)
    width: float = config_field(1.0, "channel-width multiplier", column=True, protocol=True,
                                bounds="(0, 16]")
    kernel_size: int = config_field(3, "spatial kernel size (5: the paper's 5x5 variant)", column=True,
                          protocol=True, choices=(3, 5, 7), bounds="[1, 15]")
    init: str = config_field("torch", "weight initialisation", column=True, protocol=True, choices=INITS)
    flip: bool = config_field(True, "random horizontal flips (off for digits: a flipped digit is another)",
                    protocol=True)
    pad: int = config_field(4, "random shifts of up to pad pixels (crop of the zero-padded image)",
                  protocol=True, bounds="[0, 32]")
    padding_mode: str = config_field("zeros", "how convolutions pad their input maps (zeros: the paper's)",
                                     column=True, choices=PADDING_MODES)
    train_subset: int | None = config_field(None, "train on a fixed random subset of this many images",
                                  column=True, protocol=True, bounds="[1, inf)", parse=int)
    data_seed: int = config_field(0, "seed of the train/test split (where the dataset has one) and subset",
                        protocol=True, bounds="[0, inf)")
    validation: int = config_field(
        0, "this many of the held-out images form a validation set (stratified by class, drawn "
        "by data_seed, see locolib.data.validation_split); the others stay the test set",
        column=True, protocol=True, bounds="[0, inf)")
    amp: bool = config_field(True, "mixed precision on CUDA")
    amp_cpu: bool = config_field(False, "bf16 autocast on the CPU (slow on most CPUs)")
    channels_last: bool = config_field(True, "train in channels_last (see locolib.train.memory_format)")
    compile: bool = config_field(False, "torch.compile the model", hashed=False)
    eval_every: int = config_field(1, "evaluate on the test set every this many epochs (and after the last)",
                         hashed=False, bounds="[1, inf)")
    checkpoint_every: float = config_field(
        60.0, "seconds of training between checkpoints (taken at the end of an epoch; and after "
        "the last)", hashed=False, bounds="[0, inf)")
    data_root: str = config_field("data", "folder of downloaded datasets", hashed=False)

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        if self.regularizer not in REGULARIZER_REGISTRY:
            raise ValueError(f"unknown regularizer {self.regularizer!r}; choose one of "
                             f"{list(REGULARIZER_REGISTRY)} (or register one in "
                             "locolib.reg.REGULARIZER_REGISTRY)")
        for f in dataclasses.fields(self):
            if f.metadata.get("bounds") is not None:
                set_(f.name, check_value(f.name, getattr(self, f.name)))
        if self.padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {self.padding_mode!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        for name in ("gamma", "eta"):
            v = getattr(self, name)
            v = tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else float(v)
            if any(not (x > 0 and math.isfinite(x)) for x in (v if isinstance(v, tuple) else (v,))):
                raise ValueError(f"{name} must be positive and finite, got {v}")
            set_(name, v)
        if self.regularizer == "l2" and (self.gamma != 1.0 or self.eta != 1.0):
            raise ValueError("regularizer='l2' is gamma = eta = 1; use regularizer='loco' for others")
        ms = tuple(float(m) for m in self.milestones)
        if any(not 0 < m <= 1 for m in ms) or list(ms) != sorted(ms):
            raise ValueError(f"milestones must be increasing fractions in (0, 1], got {ms}")
        set_("milestones", ms)
        set_("data_root", str(self.data_root))

    # -- identity ---------------------------------------------------------------------------
    @property
    def key(self) -> str:
        """``<dataset>-<network>-<regularizer>-s<seed>-<hash>``: 10 hex digits of SHA-256 over
        :data:`TRAINING_VERSION` and the hashed fields that differ from their defaults."""
        return f"{self.dataset}-{self.network}-{self.regularizer}-s{self.seed}-{self.key_hash}"

    @property
    def key_hash(self) -> str:
        d = self.to_dict()
        changed = {f.name: d[f.name] for f in dataclasses.fields(self)
                   if f.metadata["hashed"] and f.name not in KEY_FIELDS
                   and d[f.name] != _plain(_default(f))}
        blob = json.dumps({"version": TRAINING_VERSION, **changed}, sort_keys=True,
                          separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return {k: _plain(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        unknown = set(d) - set(config_fields())
        if unknown:
            raise ValueError(f"unknown RunConfig fields {sorted(unknown)} (written by a newer "
                             "locolib? upgrade it)")
        return cls(**d)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> RunConfig:
        """The config of a training ``record`` (chapters 05-07). A field this locolib does not
        know is dropped when the record's key shows it held its default (a newer locolib's record
        of a run this one computes alike); otherwise ValueError."""
        d = record["config"]
        unknown = sorted(set(d) - set(config_fields()))
        config = cls(**{k: v for k, v in d.items() if k not in unknown})
        if unknown and config.key != record.get("key"):
            raise ValueError(f"unknown RunConfig fields {unknown} away from their defaults "
                             "(written by a newer locolib? upgrade it)")
        return config

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


def check_value(name: str, value: Any) -> Any:
    """``value`` as field ``name`` of :class:`RunConfig` holds it (an int or a float), or a
    TypeError / ValueError naming the field: of the field's type and within its ``bounds``. (Chapters 04-07)"""
    f = _field(name)
    if value is None and f.default is None:
        return None
    kind = _type_hints()[name]
    integer = kind is int or int in typing.get_args(kind)
    if isinstance(value, bool) or not isinstance(
            value, (int, np.integer) if integer else (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be {'an int' if integer else 'a number'}, got {value!r}")
    value = int(value) if integer else float(value)
    bounds = f.metadata["bounds"]
    low, high = (float(x) for x in bounds[1:-1].split(","))
    if not ((value > low if bounds[0] == "(" else value >= low)
            and (value < high if bounds[-1] == ")" else value <= high)):
        raise ValueError(f"{name} must lie in {bounds}, got {value}")
    return value


@functools.cache
def _type_hints() -> dict[str, Any]:
    """RunConfig's field types (resolved once: typing.get_type_hints is slow, and every config
    checks every bounded field)."""
    return typing.get_type_hints(RunConfig)


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def config_fields(flag: str | None = None) -> tuple[str, ...]:
    """Names of :class:`RunConfig`'s fields in order; with ``flag`` (``"hashed"``, ``"column"``,
    ``"protocol"``, ``"cli"``) only those whose metadata sets it. (Chapters 04-07)"""
    return tuple(f.name for f in dataclasses.fields(RunConfig) if flag is None or f.metadata[flag])


def field_default(name: str) -> Any:
    """The default of field ``name`` (``dataclasses.MISSING`` for the four key fields). (Chapters 04-07)"""
    return _default(_field(name))


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _field(name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(RunConfig) if f.name == name)


def field_info(name: str) -> dict[str, Any]:
    """The metadata of field ``name`` (help, hashed, column, protocol, cli, choices, bounds,
    parse). (Chapters 04-07)"""
    return dict(_field(name).metadata)
