"""Networks trained elsewhere, read offline: ONNX files inside ordinary PyPI packages (chapter 07).

Table 4 of the paper rests on networks that others trained. Besides torchvision's ImageNet
weights (:mod:`locolib.pretrained`, which need a download from outside PyPI), real trained
convolutional networks ship inside ordinary Python packages as ONNX files, readable with the
``onnx`` package alone (:func:`locolib.kernels.from_onnx`). :data:`PINNED` pins each one: the
package and version, the file inside its wheel and the file's SHA-256, and what the package says
about the network's task, training data and licence.

How the book gets the files. The packages' own dependencies (onnxruntime, OpenCV) are heavy and
not needed to read weights, so nothing is installed: :func:`fetch` runs
``python -m pip download --no-deps --only-binary=:all: PACKAGE==VERSION`` into a scratch folder,
reads the ``.onnx`` members out of the wheel (a zip file), checks them against the pinned
SHA-256, records the licence the wheel states (:func:`wheel_licence`), and deletes the wheel.
The files are kept in a cache folder, :func:`cache_dir`: ``$LOCOLIB_MODELS`` if set, else
``data/onnx`` in the repository (not committed), so later builds work offline. Without the
files and without PyPI, :func:`fetch` stops with an error that says where to put them.

:func:`toy_network` writes a small ONNX graph with a known answer instead (the chapter's smoke
profile and the tests, which need no network).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from email.parser import Parser
from pathlib import Path

import numpy as np
import pandas as pd

from locolib.io import sha256
from locolib.kernels import ConvKernel, from_onnx, ring_names, select
from locolib.locality import TABLE4_PAIRS, layer_tests, magnitude_ratios, table4_row
from locolib.results import repository_root

__all__ = [
    "MODELS_ENV",
    "Network",
    "PINNED",
    "cache_dir",
    "model_path",
    "fetch",
    "wheel_licence",
    "licences",
    "networks_frame",
    "licence_problems",
    "toy_network",
    "load",
    "layer_summary",
    "table4_elsewhere",
    "ratios_elsewhere",
    "layer_tests_elsewhere",
    "locality_summary",
]

MODELS_ENV = "LOCOLIB_MODELS"
_LICENCE_FILE = "licence.json"


@dataclass(frozen=True)
class Network:
    """One ONNX network inside a pinned wheel, with what its package documents about it. (Chapter 07)"""

    name: str
    package: str
    version: str
    member: str          # path of the .onnx file inside the wheel
    sha256: str
    task: str
    architecture: str
    training_data: str   # as the package documents it (or that it does not)
    licence: str         # as the wheel's METADATA and licence files state it
    metadata_licence: str = ""  # the ``License`` field of the wheel's METADATA, verbatim
    licence_files: str = ""     # the first line of the licence files in the wheel ("": none)


_RAPIDOCR_DATA = ("not documented in the package; the file names say PaddleOCR's Chinese "
                  "(\"ch\") PP-OCR models, which read Chinese and English text")
_RAPIDOCR = dict(package="rapidocr-onnxruntime", version="1.4.4", licence="Apache-2.0",
                 metadata_licence="Apache-2.0")

#: The networks the book did not train, by name (pinned: package version and file SHA-256).
PINNED: dict[str, Network] = {n.name: n for n in (
    Network(name="PP-OCRv4 det", member="rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
            sha256="d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
            task="text detection (where text is in a photo or scan)",
            architecture="PP-OCRv4 mobile detector: depth-wise 3 x 3 and 5 x 5 backbone, "
                         "dense 3 x 3 neck", training_data=_RAPIDOCR_DATA, **_RAPIDOCR),
    Network(name="PP-OCRv4 rec", member="rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
            sha256="48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
            task="text recognition (the characters of a cropped text line)",
            architecture="PP-OCRv4 mobile recogniser: depth-wise 3 x 3 and 5 x 5 backbone, "
                         "1 x 3 convolutions in its head", training_data=_RAPIDOCR_DATA, **_RAPIDOCR),
    Network(name="PP-OCR cls", member="rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
            sha256="e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
            task="text direction (is a text line upside down: 0 or 180 degrees)",
            architecture="PP-OCR v2.0 mobile classifier: MobileNetV3-style, depth-wise 3 x 3 and 5 x 5",
            training_data=_RAPIDOCR_DATA, **_RAPIDOCR),
    Network(name="YOLOv8n (NudeNet)", package="nudenet", version="3.4.2", member="nudenet/320n.onnx",
            sha256="c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
            task="object detection: 18 classes of exposed or covered body parts, 320 x 320 input",
            architecture="Ultralytics YOLOv8n: dense 3 x 3 and 1 x 1 convolutions",
            training_data="not documented in the package (its README lists the 18 labels)",
            licence="MIT in METADATA; the licence files in the wheel are the GNU AGPL v3",
            metadata_licence="MIT", licence_files="GNU AFFERO GENERAL PUBLIC LICENSE"),
    Network(name="ddddocr OCR", package="ddddocr", version="1.6.1", member="ddddocr/common.onnx",
            sha256="33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8",
            task="captcha text recognition (the package's 'beta' OCR model)",
            architecture="dense 3 x 3 convolutional network with a recurrent head",
            training_data="'large amounts of randomly generated data' (the README, in Chinese), "
                          "trained with the authors' dddd_trainer in PyTorch",
            licence="MIT", metadata_licence="The MIT License (MIT)",
            licence_files="The MIT License (MIT)"),
)}


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
def cache_dir(start: str | Path | None = None) -> Path:
    """Where the model files are kept: ``$LOCOLIB_MODELS`` if set; else ``<repo>/data/onnx``,
    ``<repo>`` the first folder at or above ``start`` (default: the working directory) holding
    ``_config.yml`` and ``locolib/`` (notebooks run in ``notebooks/``); else ``./data/onnx``. (Chapter 07)"""
    env = os.environ.get(MODELS_ENV)
    return Path(env).expanduser() if env else repository_root(start) / "data" / "onnx"


def _network(name: str) -> Network:
    if name not in PINNED:
        raise ValueError(f"unknown network {name!r}; choose from {list(PINNED)}")
    return PINNED[name]


def _package_dir(net: Network, cache: Path) -> Path:
    return cache / f"{net.package}-{net.version}"


def model_path(name: str, cache: str | Path | None = None) -> Path:
    """Where :func:`fetch` keeps the ONNX file of network ``name``. (Chapter 07)"""
    net = _network(name)
    return _package_dir(net, Path(cache) if cache is not None else cache_dir()) / Path(net.member).name


def wheel_licence(wheel: str | Path) -> dict[str, object]:
    """The licence a wheel states: METADATA's ``License`` field and licence classifiers, and the
    first line of every licence file in its ``.dist-info`` folder. (Chapter 07)"""
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        headers = Parser().parsestr(z.read(meta).decode("utf-8", "replace"), headersonly=True)
        files = {}
        for n in names:
            base = Path(n).name.upper()
            if ".dist-info/" in n and (base.startswith("LICENSE") or base.startswith("LICENCE")
                                        or base.startswith("COPYING")):
                text = z.read(n).decode("utf-8", "replace").strip()
                files[n.split(".dist-info/")[1]] = text.splitlines()[0].strip() if text else ""
    stated = (headers.get("License") or "").strip()
    return {"license": stated.splitlines()[0].strip() if stated else "",
            "classifiers": [c for c in headers.get_all("Classifier") or [] if c.startswith("License")],
            "files": files}


def _download_wheel(package: str, version: str, dest: Path) -> Path:
    """``pip download --no-deps`` of one pinned wheel into ``dest``; RuntimeError if it fails."""
    spec = f"{package}=={version}"
    # Only files are read, nothing runs: the package's Python bounds do not matter here.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--ignore-requires-python", "--disable-pip-version-check", "--quiet", spec, "-d", str(dest)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(f"downloading {spec} from PyPI took over 10 minutes") from err
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        said = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"could not download {spec} from PyPI (no network?); pip said: "
                           f"{' | '.join(said) or 'nothing'}")
    return wheels[0]


def _extract(net_names: Sequence[str], cache: Path) -> None:
    """Download the (one) package of ``net_names`` and keep their checked files and its licence."""
    first = _network(net_names[0])
    target = _package_dir(first, cache)
    with tempfile.TemporaryDirectory(prefix="locolib-wheel-") as scratch:
        wheel = _download_wheel(first.package, first.version, Path(scratch))
        target.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as z:
            for name in net_names:
                net = _network(name)
                out = target / Path(net.member).name
                tmp = out.with_suffix(".part")
                with z.open(net.member) as src, open(tmp, "wb") as dst:
                    while block := src.read(1 << 20):
                        dst.write(block)
                got = sha256(tmp)
                if got != net.sha256:
                    tmp.unlink()
                    raise RuntimeError(f"{net.member} in {wheel.name} has SHA-256 {got}, not the "
                                       f"pinned {net.sha256}: the package changed on PyPI")
                tmp.replace(out)
        (target / _LICENCE_FILE).write_text(json.dumps(
            {"wheel": wheel.name, "wheel_sha256": sha256(wheel), **wheel_licence(wheel)}, indent=1))


def fetch(names: Iterable[str] | None = None, cache: str | Path | None = None,
          download: bool = True) -> dict[str, Path]:
    """The ONNX files of ``names`` (default: all of :data:`PINNED`), name -> path.

    Files already in the cache are used when their SHA-256 matches the pin. Missing ones are
    downloaded (one ``pip download --no-deps`` per package) unless ``download=False``; without
    them and without PyPI this raises FileNotFoundError or RuntimeError, naming the folder where
    the files would have to be. A cached file whose SHA-256 is not the pin is named with both
    hashes: a ValueError with ``download=False``, else a warning, and it is downloaded again. (Chapter 07)
    """
    names = list(PINNED) if names is None else list(names)
    cache = Path(cache) if cache is not None else cache_dir()
    missing: dict[tuple[str, str], list[str]] = {}
    altered: list[str] = []
    for name in names:
        path, net = model_path(name, cache), _network(name)
        actual = sha256(path) if path.is_file() else None
        if actual is not None and actual != net.sha256:
            altered.append(f"{path} has SHA-256 {actual}, not the pinned {net.sha256}")
        if actual != net.sha256 or not (_package_dir(net, cache) / _LICENCE_FILE).is_file():
            missing.setdefault((net.package, net.version), []).append(name)
    if altered and not download:
        raise ValueError(f"{'; '.join(altered)}: changed or damaged; delete it and run "
                         "fetch(download=True) where PyPI is reachable")
    for line in altered:
        warnings.warn(f"{line}: changed or damaged; downloading it again", stacklevel=2)
    if missing and not download:
        wanted = ", ".join(f"{p}=={v}" for p, v in missing)
        raise FileNotFoundError(f"the ONNX files of {sum(missing.values(), [])} are not in {cache} and "
                                f"downloads are off; run fetch(download=True) where PyPI is reachable "
                                f"(it downloads {wanted}) or set ${MODELS_ENV} to a folder that has them")
    for group in missing.values():
        try:
            _extract(group, cache)
        except RuntimeError as err:
            raise RuntimeError(f"{err}. The files go to {cache} (or ${MODELS_ENV}); a build "
                               "without PyPI needs them there") from err
    return {name: model_path(name, cache) for name in names}


def licences(names: Iterable[str], cache: str | Path | None = None) -> dict[str, dict]:
    """name -> what the fetched wheel states about its licence (see :func:`wheel_licence`). (Chapter 07)"""
    cache = Path(cache) if cache is not None else cache_dir()
    return {name: json.loads((_package_dir(_network(name), cache) / _LICENCE_FILE).read_text())
            for name in names}


def networks_frame(names: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per network: name, package (pinned), task, architecture, training data and
    licence as the package documents them, and the file's SHA-256. (Chapter 07)"""
    rows = []
    for name in (list(PINNED) if names is None else names):
        net = asdict(_network(name))
        net["package"] = f"{net.pop('package')}=={net.pop('version')}"
        del net["metadata_licence"], net["licence_files"], net["member"]
        rows.append(net)
    columns = ["name", "package", "task", "architecture", "training_data", "licence", "sha256"]
    return pd.DataFrame(rows)[columns].set_index("name")


def licence_problems(names: Iterable[str], cache: str | Path | None = None) -> list[str]:
    """Chapter 07's check that each fetched wheel states the licence :data:`PINNED` records:
    its METADATA ``License`` field and the first line of its licence files; one line per
    disagreement, empty if none. (Chapter 07)"""
    out = []
    for name, stated in licences(names, cache).items():
        net = _network(name)
        files = set(stated["files"].values())
        if stated["license"] != net.metadata_licence:
            out.append(f"{name}: the wheel states {stated['license']!r}, PINNED says "
                       f"{net.metadata_licence!r}")
        if files != ({net.licence_files} if net.licence_files else set()):
            out.append(f"{name}: the wheel's licence files begin {sorted(files)}, PINNED says "
                       f"{net.licence_files!r}")
    return out


# --------------------------------------------------------------------------------------------
# A network with a known answer (no download)
# --------------------------------------------------------------------------------------------
def toy_network(path: str | Path | None = None, seed: int = 0) -> Path:
    """Write a small ONNX graph whose kernels are local by construction and return its path
    (``path``, or a new temporary folder's ``toy.onnx``).

    Three dense 3 x 3 layers (centre-heavy magnitudes, random signs), a 1 x 1 layer, three
    depth-wise 3 x 3 and two depth-wise 5 x 5 layers (weights decaying with the distance from
    the centre), and a 1 x 3 layer; half the weights are initializers, half Constant nodes, as
    in the networks of :data:`PINNED`. The chapter's smoke profile uses it in their place. (Chapter 07)
    """
    import onnx  # noqa: PLC0415 -- optional dependency (locolib[book])
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415 -- optional dependency (locolib[book])

    rng = np.random.default_rng(seed)

    def decaying(shape, k, scale):
        d2 = np.add.outer((np.arange(k) - k // 2) ** 2, (np.arange(k) - k // 2) ** 2)
        return rng.normal(size=shape) * np.exp(-d2 / scale)

    specs = [(decaying((16, 3, 3, 3), 3, 4.0) * rng.choice([-1, 1], (16, 3, 1, 1)), 1),
             (decaying((16, 16, 3, 3), 3, 4.0), 1), (decaying((16, 16, 3, 3), 3, 4.0), 1),
             (rng.normal(size=(16, 16, 1, 1)), 1),
             (decaying((16, 1, 3, 3), 3, 2.0), 16), (decaying((16, 1, 3, 3), 3, 2.0), 16),
             (decaying((16, 1, 3, 3), 3, 2.0), 16),
             (decaying((64, 1, 5, 5), 5, 2.0), 16), (decaying((64, 1, 5, 5), 5, 2.0), 64),
             (rng.normal(size=(8, 64, 1, 3)), 1)]
    nodes, inits, x = [], [], "image"
    for i, (w, groups) in enumerate(specs):
        tensor = numpy_helper.from_array(w.astype(np.float32), f"w{i}")
        if i % 2:
            nodes.append(helper.make_node("Constant", [], [f"w{i}"], value=tensor))
        else:
            inits.append(tensor)
        kh, kw = w.shape[-2:]
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"y{i}"], name=f"conv{i}", group=groups,
                                      pads=[kh // 2, kw // 2, kh // 2, kw // 2]))
        x = f"y{i}"
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                           [1, 3, 32, 32])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 8, 32, 32])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    path = Path(path) if path is not None else Path(tempfile.mkdtemp(prefix="locolib-")) / "toy.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


# --------------------------------------------------------------------------------------------
# Table 4 of networks trained elsewhere
# --------------------------------------------------------------------------------------------
def load(paths: Mapping[str, str | Path]) -> dict[str, list[ConvKernel]]:
    """name -> the spatial kernels of that network's ONNX file (:func:`locolib.kernels.from_onnx`). (Chapter 07)"""
    return {name: from_onnx(path) for name, path in paths.items()}


def layer_summary(networks: Mapping[str, Sequence[ConvKernel]]) -> pd.DataFrame:
    """Per network and kernel shape and kind: the number of layers and of matrices. 1 x k and
    k x 1 kernels (not k x k matrices: Eq. 7.1 has no rings for them) are listed apart. (Chapter 07)"""
    rows = []
    for name, layers in networks.items():
        for layer in layers:
            kh, kw = layer.kernel_shape
            rows.append({"network": name, "kernel": f"{kh} x {kw}", "kind": layer.kind,
                         "k x k": layer.square, "matrices": layer.matrices})
    frame = pd.DataFrame(rows, columns=["network", "kernel", "kind", "k x k", "matrices"])
    return (frame.groupby(["network", "k x k", "kernel", "kind"], sort=False)
            .agg(layers=("matrices", "size"), matrices=("matrices", "sum")))


def table4_elsewhere(networks: Mapping[str, Sequence[ConvKernel]], permutations: int = 1000,
                     seed: int = 0, min_layers: int = 2) -> pd.DataFrame:
    """Table 4 (all / lower / upper half, signed and magnitudes, t-test and permutation test)
    of each network, separately for each kernel size k and kind of layer (dense, depth-wise):
    :func:`locolib.locality.table4_row` on those layers with every pair of consecutive rings
    of a k x k kernel (for 3 x 3 the paper's m(c,n) and m(n,co); for 5 x 5 also the outer
    rings). Groups with fewer than ``min_layers`` layers (e.g. a single stem convolution) have no
    halves and are left out. Extra columns: network, k, kind, layers ("3x3 depthwise"). (Chapter 07)
    """
    frames = []
    for name, layers in networks.items():
        square = select(layers)
        for k in sorted({layer.k for layer in square}):
            for kind in dict.fromkeys(layer.kind for layer in select(square, k)):
                group = select(square, k, kind)
                if len(group) < min_layers:
                    continue
                names = ring_names(k)
                tidy = table4_row(group, name, pairs=list(zip(names, names[1:])),
                                  permutations=permutations, seed=seed)
                frames.append(tidy.assign(network=name, k=k, kind=kind, layers=f"{k}x{k} {kind}"))
    if not frames:
        raise ValueError(f"no kernel size and kind has {min_layers} or more k x k layers")
    out = pd.concat(frames, ignore_index=True)
    out["model"] = out["network"] + ", " + out["layers"]
    return out


def _groups(networks: Mapping[str, Sequence[ConvKernel]], k: int, min_layers: int):
    """(network, kind, layers) of every group of k x k layers of one kind with ``min_layers``
    or more layers (a single stem convolution is left out, as in :func:`table4_elsewhere`)."""
    for name, layers in networks.items():
        square = select(select(layers), k)
        for kind in dict.fromkeys(layer.kind for layer in square):
            group = select(square, k, kind)
            if len(group) >= min_layers:
                yield name, kind, group


def ratios_elsewhere(networks: Mapping[str, Sequence[ConvKernel]], k: int = 3,
                     min_layers: int = 2) -> pd.DataFrame:
    """Chapter 07: :func:`locolib.locality.magnitude_ratios` of every k x k layer of each
    network, with columns network and kind (dense, depthwise). (Chapter 07)"""
    frames = [magnitude_ratios(group).assign(network=name, kind=kind)
              for name, kind, group in _groups(networks, k, min_layers)]
    if not frames:
        raise ValueError(f"no network has {min_layers} or more {k} x {k} layers of one kind")
    return pd.concat(frames, ignore_index=True)


def layer_tests_elsewhere(networks: Mapping[str, Sequence[ConvKernel]], k: int = 3,
                          permutations: int = 1000, seed: int = 0, min_layers: int = 2) -> pd.DataFrame:
    """Chapter 07: :func:`locolib.locality.layer_tests` (magnitudes) of every k x k layer of each
    network, with columns network and kind. (Chapter 07)"""
    frames = [layer_tests(group, True, permutations, seed).assign(network=name, kind=kind)
              for name, kind, group in _groups(networks, k, min_layers)]
    if not frames:
        raise ValueError(f"no network has {min_layers} or more {k} x {k} layers of one kind")
    return pd.concat(frames, ignore_index=True)


def locality_summary(tidy: pd.DataFrame, alpha: float = 0.001) -> pd.DataFrame:
    """Chapter 07: :func:`table4_elsewhere` in one row per network, layer group and reading
    (signed, |w|): the all-layer m(c,n) and m(n,co), the smaller m and the larger |m| of the two,
    and ``local``: both m > 0 with p < ``alpha`` by the t-test and by the permutation test. (Chapter 07)"""
    names = [f"m({a},{b})" for a, b in TABLE4_PAIRS]
    cells = tidy[(tidy.part == "all") & tidy.pair.isin(names)]
    rows = []
    for (network, layers, absolute), g in cells.groupby(["network", "layers", "absolute"], sort=False):
        m = g.set_index("pair").m
        rows.append({"network": network, "layers": layers, "reading": "|w|" if absolute else "signed",
                     **{n: m[n] for n in names}, "smallest m": m.min(), "largest |m|": m.abs().max(),
                     "local": bool((g.m > 0).all() and (g.p < alpha).all() and (g.p_perm < alpha).all())})
    return pd.DataFrame(rows).set_index(["network", "layers", "reading"])
