"""The kernel vocabulary (locolib.kernels): sizes, rings, index sets, stars, torch and ONNX kernels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from torch import nn

from locolib import kernels as K
from locolib import locality as lo

CENTRE, NEIGHBOURS, CORNERS = [(1, 1)], [(0, 1), (1, 0), (1, 2), (2, 1)], [(0, 0), (0, 2), (2, 0), (2, 2)]


# ----------------------------------------------------------------------------- sizes and rings

def test_rings_3x3_and_5x5():
    assert K.rings(3) == {"c": ((1, 1),), "n": tuple(sorted(NEIGHBOURS)), "co": tuple(sorted(CORNERS))}
    r5 = K.rings(5)
    assert list(r5) == K.ring_names(5) == ["c", "n", "co", "2", "sqrt5", "sqrt8"]
    assert [len(v) for v in r5.values()] == [1, 4, 4, 4, 8, 4]
    assert sum(len(v) for v in K.rings(7).values()) == 49
    assert K.squared_distances(7) == [0, 1, 2, 4, 5, 8, 9, 10, 13, 18]
    for _name, positions in r5.items():
        d2 = {(i - 2) ** 2 + (j - 2) ** 2 for i, j in positions}
        assert len(d2) == 1
    assert K.ring_distances(5) == pytest.approx([0, 1, math.sqrt(2), 2, math.sqrt(5), math.sqrt(8)])
    assert K.ring_index(5)[0, 0] == 5 and K.ring_index(1).tolist() == [[0]]


def test_one_grammar_for_index_sets():
    r5 = K.rings(5)
    assert K.index_set("sqrt4", 5) == r5["2"] == K.index_set("2", 5)
    assert K.index_set("sqrt2", 3) == K.rings(3)["co"] == K.index_set("CO", 3)
    assert K.index_set("0", 3) == ((1, 1),) == K.index_set("centre", 3) == K.index_set("center", 3)
    assert K.index_set("1", 3) == K.rings(3)["n"]
    assert K.index_set("co", 5) == ((1, 1), (1, 3), (3, 1), (3, 3))  # the corners of the central 3 x 3
    assert K.index_set([(0, 0), (2, 2)], 3) == ((0, 0), (2, 2))
    np.testing.assert_array_equal(K.index_mask("n", 3), [[0, 1, 0], [1, 0, 1], [0, 1, 0]])
    assert K.spec_name("n") == "n" and K.spec_name([[0, 1]]) == "((0, 1),)"


@pytest.mark.parametrize("spec, k, match", [
    ("centre-ish", 3, "unknown index set"), ("2", 3, "no ring"), ("sqrt3", 5, "no ring"),
    ([(3, 0)], 3, "not a .row, col. index"), ([], 3, "empty"), ([(0, 0), (0, 0)], 3, "repeats"),
])
def test_index_set_errors(spec, k, match):
    with pytest.raises(ValueError, match=match):
        K.index_set(spec, k)


def test_check_k():
    assert K.check_k(3) == 3 and K.check_k(np.int64(5)) == 5 and K.check_k(4, odd=False) == 4
    for bad in (4, 0, -3):
        with pytest.raises(ValueError, match="odd"):
            K.check_k(bad)
    with pytest.raises(ValueError, match="positive"):
        K.check_k(0, odd=False)
    for bad in (3.0, True, "3"):
        with pytest.raises(TypeError):
            K.check_k(bad)


@pytest.mark.parametrize("p, code", [(0.0, "***"), (0.00099, "***"), (0.001, "**"), (0.0099, "**"),
                                     (0.01, "*"), (0.05, "*"), (0.0999, "*"), (0.1, ""), (0.7, ""),
                                     (None, ""), (float("nan"), "")])
def test_stars_use_the_papers_levels(p, code):
    assert K.stars(p) == code


def test_stars_reject_numbers_that_are_no_p_value():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        K.stars(1.5)


def test_eq_6_1_index_sets_are_the_kernel_vocabulary():
    from locolib import reg

    assert reg.I_CO == K.index_set("co", 3)


# ----------------------------------------------------------------------------- torch models

def test_spatial_convs_of_a_torch_model():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, groups=8),
                          nn.Conv2d(8, 4, 5), nn.Conv2d(4, 4, (1, 3)))
    assert [tuple(w.shape) for w in K.spatial_kernels(model, 3)] == [(8, 3, 3, 3), (8, 1, 3, 3)]
    assert [tuple(w.shape) for w in K.spatial_kernels(model, 5)] == [(4, 8, 5, 5)]
    assert all(not w.requires_grad for w in K.spatial_kernels(model, 3))
    with pytest.raises(ValueError, match="square"):
        K.spatial_convs(model)  # LOCO-REG's reading: every spatial conv must have a centre
    assert len(K.spatial_convs(model[:4])) == 3
    with pytest.raises(ValueError, match="odd"):
        K.spatial_convs(nn.Sequential(nn.Conv2d(1, 1, 2)))


# ----------------------------------------------------------------------------- ONNX graphs

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def conv_graph(specs, opset=13):
    """A chain of convolutions. ``specs``: (weight, groups, how) with how "init" (initializer),
    "const" (Constant node), "identity" (Identity of an initializer) or "input" (a graph input)."""
    first, last = specs[0][0], specs[-1][0]
    nodes, inits = [], []
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, first.shape[1] * specs[0][1], 8, 8])]
    x = "x"
    for i, (w, groups, how) in enumerate(specs):
        name = f"w{i}"
        tensor = numpy_helper.from_array(np.asarray(w, np.float32), name)
        if how == "init":
            inits.append(tensor)
        elif how == "const":
            nodes.append(helper.make_node("Constant", [], [name], value=tensor))
        elif how == "identity":
            inits.append(numpy_helper.from_array(np.asarray(w, np.float32), name + "_raw"))
            nodes.append(helper.make_node("Identity", [name + "_raw"], [name]))
        else:
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(w.shape)))
        kh, kw = w.shape[-2:]
        nodes.append(helper.make_node("Conv", [x, name], [f"y{i}"], name=f"conv{i}", group=groups,
                                      kernel_shape=[kh, kw], pads=[kh // 2, kw // 2] * 2))
        x = f"y{i}"
    output = helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, last.shape[0], 8, 8])
    graph = helper.make_graph(nodes, "g", inputs, [output], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_from_onnx_reads_initializers_constants_and_groups(tmp_path):
    rng = np.random.default_rng(0)
    dense = rng.normal(size=(8, 3, 3, 3))
    point = rng.normal(size=(8, 8, 1, 1))
    depthwise = rng.normal(size=(8, 1, 5, 5))
    grouped = rng.normal(size=(8, 4, 3, 3))
    row = rng.normal(size=(4, 8, 1, 3))
    col = rng.normal(size=(4, 4, 3, 1))
    model = conv_graph([(dense, 1, "init"), (point, 1, "const"), (depthwise, 8, "const"),
                        (grouped, 2, "identity"), (row, 1, "init"), (col, 1, "const")])
    onnx.checker.check_model(model)
    path = tmp_path / "net.onnx"
    onnx.save(model, path)
    layers = K.from_onnx(path)
    assert [layer.name for layer in layers] == ["conv0", "conv2", "conv3", "conv4", "conv5"]  # 1x1 left out
    for layer, w in zip(layers, (dense, depthwise, grouped, row, col)):
        np.testing.assert_allclose(layer.weight, w.astype(np.float32))
        assert not layer.weight.flags.writeable
    assert [layer.kind for layer in layers] == ["dense", "depthwise", "grouped", "dense", "dense"]
    assert [layer.kernel_shape for layer in layers] == [(3, 3), (5, 5), (3, 3), (1, 3), (3, 1)]
    assert [layer.square for layer in layers] == [True, True, True, False, False]
    assert [layer.k for layer in layers] == [3, 5, 3, None, None]
    assert [layer.in_channels for layer in layers] == [3, 8, 8, 8, 4]
    assert [layer.matrices for layer in layers] == [24, 8, 32, 32, 16]
    # select: square layers only, by size and kind; a loaded ModelProto works as well
    assert [layer.name for layer in K.select(K.from_onnx(model), k=3)] == ["conv0", "conv3"]
    assert [layer.name for layer in K.select(layers, kind="depthwise")] == ["conv2"]
    assert [layer.name for layer in K.select(layers, 3, ["dense", "grouped"])] == ["conv0", "conv3"]


def test_onnx_kernels_give_the_answer_of_the_weights_themselves():
    """A graph whose answer is known: centre-heavy 3 x 3 kernels; Table 4 from the graph equals
    Table 4 from the arrays put into it."""
    rng = np.random.default_rng(1)
    ws = [rng.normal(size=(o, i, 3, 3)) for o, i in ((16, 3), (16, 16), (8, 16))]
    for w in ws:
        w[..., 1, 1] += 2.0
    layers = K.from_onnx(conv_graph([(w, 1, how) for w, how in zip(ws, ("init", "const", "init"))]))
    got = lo.table4_row(layers, "graph")
    want = lo.table4_row([w.astype(np.float32) for w in ws], "graph")
    np.testing.assert_allclose(got["m"], want["m"], rtol=1e-12)
    assert (got.query("not absolute and pair == 'm(c,n)'").stars == "***").all()
    assert lo.m_score(layers, "c", "n") > 1


def test_from_onnx_refuses_weights_computed_at_run_time():
    model = conv_graph([(np.ones((2, 1, 3, 3)), 1, "input")])
    with pytest.raises(ValueError, match="neither an initializer nor"):
        K.from_onnx(model)


def test_from_onnx_skips_what_is_no_2d_convolution():
    w = numpy_helper.from_array(np.ones((2, 2, 3, 3), np.float32), "w")
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up"),
             helper.make_node("Conv", ["y", "w1d"], ["z"], name="conv1d")]
    w1d = numpy_helper.from_array(np.ones((2, 2, 3), np.float32), "w1d")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
                              initializer=[w, w1d])
    assert K.from_onnx(helper.make_model(graph)) == []


@pytest.mark.parametrize("content", [b"", b"\xff\xfe not an ONNX model" * 3], ids=["empty", "garbage"])
def test_from_onnx_refuses_a_file_that_is_no_onnx_model(content, tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"{path}: not an ONNX model"):
        K.from_onnx(path)
