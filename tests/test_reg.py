"""LOCO-REG (Eq. 6.1): masks, the loss form, the optimizer form and the Table 6 helpers."""

import copy
import math

import pytest
import torch
from torch import nn

from locolib.kernels import index_set, ring_distances, ring_index, spatial_convs, spatial_kernels
from locolib.models import build_model
from locolib.reg import (
    I_C,
    I_CO,
    I_N,
    LocoDecay,
    layer_ratios,
    loco_mask,
    loco_penalty,
    modulate,
    region_mean,
    ring_weights,
    table6_parameters,
)

torch.set_num_threads(1)


# ---------------------------------------------------------------- masks
def test_mask_3x3_matches_eq_6_1_by_hand():
    gamma, eta = 2.0, 0.5
    z = (2.0 + 4 * (1 + 0.5)) / 9  # = 8/9
    expected = torch.tensor(
        [[eta, 1, eta], [1, gamma, 1], [eta, 1, eta]], dtype=torch.float32
    ) / z
    m = loco_mask(gamma, eta)
    assert m.dtype == torch.float32 and m.shape == (3, 3)
    torch.testing.assert_close(m, expected)
    assert m[1, 1].item() == pytest.approx(2.25)  # 2 * 9 / 8


@pytest.mark.parametrize("k", [3, 5, 7])
def test_uniform_mask_is_all_ones_and_means_are_one(k):
    torch.testing.assert_close(loco_mask(1.0, 1.0, k), torch.ones(k, k))
    for g, e in [(0.3, 2.0), (1.7, 0.4), (5.0, 5.0)]:
        assert loco_mask(g, e, k).double().mean().item() == pytest.approx(1.0, abs=1e-6)


def test_rings_and_index_sets():
    assert ring_distances(3) == pytest.approx([0, 1, math.sqrt(2)])
    assert ring_distances(5) == pytest.approx([0, 1, math.sqrt(2), 2, math.sqrt(5), math.sqrt(8)])
    assert len(ring_distances(7)) == 10  # d^2 in {0,1,2,4,5,8,9,10,13,18}
    ri = ring_index(3)
    assert {tuple(t) for t in (ri == 0).nonzero().tolist()} == set(I_C)
    assert {tuple(t) for t in (ri == 1).nonzero().tolist()} == set(I_N)
    assert {tuple(t) for t in (ri == 2).nonzero().tolist()} == set(I_CO)
    # 5x5: every tap's ring matches its distance from the centre
    ri5, d5 = ring_index(5), ring_distances(5)
    for i in range(5):
        for j in range(5):
            assert d5[ri5[i, j]] == pytest.approx(math.hypot(i - 2, j - 2))
    assert sorted(index_set("co", 5)) == [(1, 1), (1, 3), (3, 1), (3, 3)]
    assert ring_index(1).tolist() == [[0]] and loco_mask(3.0, 2.0, 1).tolist() == [[1.0]]


def test_explicit_rings_and_extensions_for_5x5():
    rings = [0.5, 1, 2, 3, 4, 5]
    m = loco_mask(9.0, 9.0, 5, rings=rings)  # rings override gamma/eta
    raw = torch.tensor(rings, dtype=torch.float64)[ring_index(5)]
    torch.testing.assert_close(m, (raw / raw.mean()).float())
    eta, g = 1.5, 0.8
    assert ring_weights(g, eta, 5) == pytest.approx([g, 1, eta, eta**3, eta**4, eta**7])
    assert ring_weights(g, eta, 5, "constant") == pytest.approx([g, 1, eta, eta, eta, eta])
    # the central 3x3 of a geometric 5x5 mask has the same shape as the 3x3 mask
    m5, m3 = loco_mask(g, eta, 5), loco_mask(g, eta, 3)
    torch.testing.assert_close(m5[1:4, 1:4] / m5[2, 2], m3 / m3[1, 1])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(gamma=1, eta=1, k=4), "odd"),
        (dict(gamma=1, eta=1, k=0), "odd"),
        (dict(gamma=1, eta=1, k=-3), "odd"),
        (dict(gamma=0.0, eta=1, k=3), "gamma"),
        (dict(gamma=1, eta=-1, k=3), "eta"),
        (dict(gamma=1, eta=float("nan"), k=3), "eta"),
        (dict(gamma=1, eta=1, k=3, rings=[1, 1]), "3 rings"),
        (dict(gamma=1, eta=1, k=5, rings=[1, 1, 1]), "6 rings"),
        (dict(gamma=1, eta=1, k=3, rings=[1, 0, 1]), "ring weight"),
        (dict(gamma=1, eta=1, k=5, extension="cubic"), "extension"),
    ],
)
def test_mask_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        loco_mask(**kwargs)


# ---------------------------------------------------------------- loss form
class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.c3 = nn.Conv2d(1, 1, 3, bias=True)
        self.c1 = nn.Conv2d(1, 2, 1)
        self.dw = nn.Conv2d(2, 2, 3, groups=2)
        self.fc = nn.Linear(2, 3)


def test_penalty_by_hand_and_excludes_1x1_and_dense():
    model = Tiny()
    w = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    with torch.no_grad():
        model.c3.weight.copy_(w)
        model.dw.weight.zero_()
    gamma, eta, lam = 3.0, 0.25, 0.1
    z = (gamma + 4 * (1 + eta)) / 9
    x = w[0, 0]
    centre = x[1, 1] ** 2
    edges = x[0, 1] ** 2 + x[1, 0] ** 2 + x[1, 2] ** 2 + x[2, 1] ** 2
    corners = x[0, 0] ** 2 + x[0, 2] ** 2 + x[2, 0] ** 2 + x[2, 2] ** 2
    expected = lam / z * (gamma * centre + edges + eta * corners)  # Eq. 6.1
    got = loco_penalty(model, gamma, eta, lam)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    with torch.no_grad():  # 1x1 conv, dense weights and biases do not enter the sum
        model.c1.weight.fill_(7.0)
        model.fc.weight.fill_(7.0)
        model.c3.bias.fill_(7.0)
    assert loco_penalty(model, gamma, eta, lam).item() == pytest.approx(expected.item(), rel=1e-6)


def test_penalty_gradient_is_2_lam_mask_w_tensorflow_convention():
    model = Tiny()
    lam = 5e-4
    loco_penalty(model, 0.5, 2.0, lam).backward()
    mask = loco_mask(0.5, 2.0)
    for conv in (model.c3, model.dw):
        torch.testing.assert_close(conv.weight.grad, 2 * lam * mask * conv.weight.detach())
    assert model.c1.weight.grad is None and model.fc.weight.grad is None


def test_per_layer_parameters_and_errors():
    model = Tiny()
    lam = 0.01
    got = loco_penalty(model, [2.0, 0.5], [0.5, 2.0], lam)
    exp = lam * (
        (loco_mask(2.0, 0.5) * model.c3.weight.square()).sum()
        + (loco_mask(0.5, 2.0) * model.dw.weight.square()).sum()
    )
    assert got.item() == pytest.approx(exp.item(), rel=1e-6)
    with pytest.raises(ValueError, match="2 spatial convolutions"):
        loco_penalty(model, [1.0, 1.0, 1.0], 1.0)
    with pytest.raises(ValueError, match="2 spatial convolutions"):
        LocoDecay(model, 1.0, [1.0])
    with pytest.raises(ValueError, match="square"):
        loco_penalty(nn.Sequential(nn.Conv2d(1, 1, (1, 3))), 1, 1)
    with pytest.raises(ValueError, match="odd"):
        loco_penalty(nn.Sequential(nn.Conv2d(1, 1, 4)), 1, 1)
    with pytest.raises(ValueError, match="no spatial convolution"):
        loco_penalty(nn.Sequential(nn.Conv2d(1, 1, 1), nn.Linear(3, 3)), 1, 1)
    with pytest.raises(ValueError, match="no spatial convolution"):
        LocoDecay(nn.Linear(3, 3))


def test_uniform_penalty_is_plain_l2():
    model = build_model("vgg13", 10, 1, width=1 / 16)
    lam = 5e-4
    l2 = lam * sum(c.weight.square().sum() for c in spatial_convs(model))
    assert loco_penalty(model, 1.0, 1.0, lam).item() == pytest.approx(l2.item(), rel=1e-6)


def test_5x5_layers_get_5x5_masks():
    model = build_model("vgg13", 10, 1, width=1 / 16, kernel_size=5)
    decay = LocoDecay(model, 0.5, 2.0, k_rings={5: [1, 1, 2, 2, 3, 3]})
    sizes = [m.shape[-1] for m in decay.masks]
    assert sizes == [5] * 6 + [3] * 4
    torch.testing.assert_close(decay.masks[0], loco_mask(0, 0, 5, rings=[1, 1, 2, 2, 3, 3]))
    torch.testing.assert_close(decay.masks[-1], loco_mask(0.5, 2.0, 3))


# ---------------------------------------------------------------- optimizer form
def _batch(in_ch, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, in_ch, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def _models():
    torch.manual_seed(0)
    yield "vgg13", build_model("vgg13", 10, 3, width=1 / 16, kernel_size=5)
    torch.manual_seed(1)
    yield "mobilenet", build_model("mobilenet", 10, 3, width=1 / 16)


@pytest.mark.parametrize("name,model", list(_models()))
def test_loss_form_equals_optimizer_form(name, model):
    """Gradients agree (float32), and so do the weights after 5 SGD-with-momentum(0.9) steps.

    The trajectory is compared in float64: these tiny BatchNorm nets at lr 0.05 amplify float32
    rounding differences chaotically within a few steps (seen: 1e-3 after 4 steps), while in
    float64 the two forms agree to ~1e-13.
    """
    n_spatial = len(spatial_convs(model))
    gam = torch.linspace(0.5, 1.5, n_spatial).tolist()
    eta = torch.linspace(2.0, 0.7, n_spatial).tolist()
    lam = 5e-3  # larger than the paper's to make the regularizer visible in 5 steps
    loss_fn = nn.CrossEntropyLoss()
    # --- gradients, float32
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    da, db = LocoDecay(a, gam, eta, lam), LocoDecay(b, gam, eta, lam)
    # the penalty of LocoDecay = loco_penalty + uniform L2 on 1x1-conv and dense weights
    extra = lam * sum(p.square().sum() for p in da.uniform)
    assert da.penalty().item() == pytest.approx((loco_penalty(a, gam, eta, lam) + extra).item(), rel=1e-5)
    x, y = _batch(3, seed=0)
    (loss_fn(a(x), y) + da.penalty()).backward()
    loss_fn(b(x), y).backward()
    db.apply_()
    for (n1, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-5, atol=1e-7, msg=n1)
    # --- 5 optimizer steps, float64; c trains without any regularization
    a, b, c = (copy.deepcopy(model).double() for _ in range(3))
    da, db = LocoDecay(a, gam, eta, lam), LocoDecay(b, gam, eta, lam)
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in (a, b, c)]
    for step in range(5):
        x, y = _batch(3, seed=step)
        x = x.double()
        for m, opt in zip((a, b, c), opts):
            opt.zero_grad()
            loss = loss_fn(m(x), y)
            if m is a:
                loss = loss + da.penalty()
            loss.backward()
            if m is b:
                db.apply_()
            opt.step()
    diff_ab = max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters()))
    diff_ac = max((pa - pc).abs().max().item() for pa, pc in zip(a.parameters(), c.parameters()))
    assert diff_ab < 1e-10, diff_ab
    assert diff_ac > 1e-4, diff_ac  # the regularizer changed the trajectory: the test has teeth


def test_decay_covers_exactly_conv_and_dense_weights():
    torch.manual_seed(0)
    model = build_model("mobilenet", 10, 3, width=1 / 16)
    decay = LocoDecay(model)
    ids = {id(p) for p in decay.params}
    expected = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert ids == expected and len(decay.params) == len(expected)
    assert len(decay.spatial) == 10 and len(decay.uniform) == 10  # 9 pointwise + FC
    for m in model.modules():  # BN parameters and biases are not regularized
        if isinstance(m, nn.BatchNorm2d):
            assert id(m.weight) not in ids and id(m.bias) not in ids
    assert id(model.classifier.bias) not in ids


def test_uniform_decay_equals_pytorch_weight_decay_2lam():
    """LocoDecay(1, 1, lam) == SGD(weight_decay=2*lam) on the regularized weights."""
    torch.manual_seed(3)
    model = build_model("resnet18", 10, 1, width=1 / 16).double()  # float64: see the test above
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    lam = 1e-2
    da, db = LocoDecay(a, 1.0, 1.0, lam), LocoDecay(b, 1.0, 1.0, lam)
    reg_b = {id(p) for p in db.params}
    oa = torch.optim.SGD(a.parameters(), lr=0.05, momentum=0.9)
    ob = torch.optim.SGD(
        [
            {"params": db.params, "weight_decay": 2 * lam},
            {"params": [p for p in b.parameters() if id(p) not in reg_b], "weight_decay": 0.0},
        ],
        lr=0.05,
        momentum=0.9,
    )
    for step in range(3):
        x, y = _batch(1, seed=10 + step)
        x = x.double()
        for mdl, opt in ((a, oa), (b, ob)):
            opt.zero_grad()
            nn.functional.cross_entropy(mdl(x), y).backward()
        da.apply_()
        oa.step()
        ob.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-10, atol=1e-12)


def _grads_after_apply(model, decay, fill):
    for p in model.parameters():
        p.grad = torch.full_like(p, fill)
    decay.apply_()
    return [p.grad.clone() for p in decay.params]


def test_apply_channels_last_dtype_and_moves():
    torch.manual_seed(0)
    model = build_model("mobilenet", 10, 3, width=1 / 16)
    lam = 0.1
    decay = LocoDecay(model, 0.5, 3.0, lam)
    ref = [0.25 + 2 * lam * (mk * p.detach()) for p, mk in zip(decay.spatial, decay.masks)]
    ref += [0.25 + 2 * lam * p.detach() for p in decay.uniform]
    got = _grads_after_apply(model, decay, 0.25)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r)
    # channels_last parameters (and gradients) give the same numbers
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    dcl = LocoDecay(cl, 0.5, 3.0, lam)
    assert dcl.spatial[0].is_contiguous(memory_format=torch.channels_last)
    for r, g in zip(ref, _grads_after_apply(cl, dcl, 0.25)):
        torch.testing.assert_close(g, r)
    # a dtype change after construction rebuilds the coefficient tensors
    decay_model = model.double()
    got64 = _grads_after_apply(decay_model, decay, 0.25)
    assert all(g.dtype == torch.float64 for g in got64)
    for r, g in zip(ref, got64):
        torch.testing.assert_close(g, r.double(), rtol=1e-6, atol=1e-7)


def test_apply_skips_params_without_grad_and_lam_zero():
    model = Tiny()
    decay = LocoDecay(model, 2.0, 0.5, 0.1)
    model.c3.weight.grad = torch.zeros_like(model.c3.weight)
    decay.apply_()  # the others have no grad
    assert model.dw.weight.grad is None and model.fc.weight.grad is None
    torch.testing.assert_close(model.c3.weight.grad, 0.2 * loco_mask(2.0, 0.5) * model.c3.weight.detach())
    model.zero_grad(set_to_none=False)
    LocoDecay(model, 2.0, 0.5, 0.0).apply_()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.parameters())


def test_penalty_gradient_equals_apply_for_tiny():
    model = Tiny()
    decay = LocoDecay(model, 2.0, 0.5, 0.1)
    decay.penalty().backward()
    auto = [p.grad.clone() for p in decay.params]
    model.zero_grad(set_to_none=False)
    decay.apply_()
    for g0, p in zip(auto, decay.params):
        torch.testing.assert_close(p.grad, g0)


# ---------------------------------------------------------------- Table 6
def _kernels(centre, edge, corner, n=50, seed=0, k=3):
    """n x 4 kernels with magnitudes (centre, edge, corner) and random signs."""
    g = torch.Generator().manual_seed(seed)
    mag = torch.tensor([[corner, edge, corner], [edge, centre, edge], [corner, edge, corner]])
    signs = torch.randint(0, 2, (n, 4, 3, 3), generator=g) * 2.0 - 1
    return mag * signs


def test_region_mean_and_ratio_by_hand():
    w = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    assert region_mean(w, "c").item() == 5.0
    assert region_mean(w, "n").item() == (2 + 4 + 6 + 8) / 4
    assert region_mean(w, "co").item() == (1 + 3 + 7 + 9) / 4
    assert region_mean(-w, I_N, absolute=False).item() == -5.0
    # r is the mean over models of per-model ratios, not a ratio of pooled sums
    m1 = [_kernels(2.0, 1.0, 0.5)]  # r(I_n, I_c) = 0.5
    m2 = [_kernels(1.0, 1.0, 1.0) * 3]  # r = 1
    assert layer_ratios([m1, m2], "n", "c") == pytest.approx([0.75])
    assert layer_ratios([m1, m2], "n", "co") == pytest.approx([(2.0 + 1.0) / 2])


def test_table6_direction_of_printed_formula():
    """Weights larger at the centre and falling to the corners (locality).

    gamma < 1: centre regularized less, as Section 6 intends. The printed eta = 1/a(r(I_n, I_co))
    is also < 1: the corners are regularized LESS than the edges, against Section 6's rationale;
    applying gamma's logic to the corners ("consistent") gives eta > 1.
    """
    layers = [_kernels(2.0, 1.0, 0.5, seed=1), _kernels(1.5, 1.0, 0.8, seed=2)]
    params = table6_parameters([layers], c=1.5)
    (g1, e1), (g2, e2) = params
    assert g1 == pytest.approx(modulate(0.5, 1.5)) == pytest.approx(0.25)
    assert e1 == pytest.approx(1 / modulate(2.0, 1.5)) == pytest.approx(0.4)
    assert g2 == pytest.approx(1 + 1.5 * (1 / 1.5 - 1))
    assert e2 == pytest.approx(1 / (1 + 1.5 * (1 / 0.8 - 1)))
    assert g1 < 1 and e1 < 1 and g2 < 1 and e2 < 1
    cons = table6_parameters([layers], c=1.5, eta_rule="consistent")
    assert cons[0][1] == pytest.approx(2.5) and cons[1][1] > 1
    # the masks these produce: printed puts the SMALLEST coefficient on the corners' side...
    mp = loco_mask(*params[0])
    assert mp[0, 0] < mp[0, 1]
    # ...consistent grows monotonically with distance from the centre
    mc = loco_mask(*cons[0])
    assert mc[1, 1] < mc[0, 1] < mc[0, 0]
    # uniform weights give the uniform regularizer
    flat = table6_parameters([[_kernels(1.0, 1.0, 1.0)]])
    assert flat[0] == pytest.approx((1.0, 1.0))


def test_table6_accepts_models_and_rejects_bad_inputs():
    torch.manual_seed(0)
    ms = [build_model("vgg13", 10, 1, width=1 / 16) for _ in range(2)]
    ks = spatial_kernels(ms[0])
    assert len(ks) == 10 and all(k.shape[-2:] == (3, 3) for k in ks)
    p_models = table6_parameters(ms)
    p_kernels = table6_parameters([spatial_kernels(m) for m in ms])
    assert len(p_models) == 10
    assert torch.allclose(torch.tensor(p_models), torch.tensor(p_kernels))
    assert torch.allclose(torch.tensor(table6_parameters(ms[0])), torch.tensor(table6_parameters(ks)))
    with pytest.raises(ValueError, match="smaller c"):
        table6_parameters([[_kernels(10.0, 1.0, 1.0)]], c=1.5)  # r = 0.1 -> a < 0
    with pytest.raises(ValueError, match="different numbers"):
        layer_ratios([ks, ks[:3]], "n", "c")
    with pytest.raises(ValueError, match="eta_rule"):
        table6_parameters(ms, eta_rule="other")
    assert modulate(1.0, 7.0) == 1.0 and modulate(2.0, 1.5) == 2.5


def test_the_permuted_mask_has_locos_factors_at_non_radial_positions():
    from locolib.reg import permuted_mask

    loco = loco_mask(0.5, 2.0)
    perm = permuted_mask(loco)
    assert sorted(perm.flatten().tolist()) == sorted(loco.flatten().tolist())
    assert float(perm.mean()) == pytest.approx(1.0)
    rings = ring_index(3)
    # No tap keeps a factor of its own ring...
    ring_of_value = {round(float(loco[rings == r][0]), 6): r for r in range(3)}
    assert all(ring_of_value[round(float(perm[i, j]), 6)] != rings[i, j]
               for i in range(3) for j in range(3))
    # ... and the result is not radial: some ring holds unequal factors.
    assert any(len(set(perm[rings == r].tolist())) > 1 for r in range(3))
    z = (0.5 + 4 * 3) / 9
    assert perm.flatten().tolist() == pytest.approx(
        [0.5 / z, 2 / z, 1 / z, 2 / z, 1 / z, 2 / z, 1 / z, 2 / z, 1 / z])
    with pytest.raises(ValueError, match="3x3"):
        permuted_mask(loco_mask(0.5, 2.0, k=5))


def test_the_permuted_regularizer_decays_with_the_permuted_mask():
    from locolib.config import RunConfig
    from locolib.reg import build_regularizer, permuted_mask

    model = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False))
    cfg = RunConfig("digits", "vgg13", "loco_permuted", 0, gamma=0.5, eta=2.0, lam=0.01)
    decay = build_regularizer(model, cfg)
    model[0].weight.grad = torch.zeros_like(model[0].weight)
    decay.apply_()
    expected = 2 * 0.01 * permuted_mask(loco_mask(0.5, 2.0)) * model[0].weight.detach()
    assert torch.allclose(model[0].weight.grad, expected)
    assert cfg.key != cfg.replace(regularizer="loco").key


def test_the_realized_factor_weights_each_mask_by_where_the_weights_are():
    from locolib.config import RunConfig
    from locolib.reg import realized_factor

    z = (0.5 + 4 * 3) / 9
    centre = [[0.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 0.0]]
    even = [[1.0] * 3] * 3
    record = [{"k": 3, "tap_sq_sum": centre, "tap_abs_sum": even},
              {"k": 3, "tap_sq_sum": centre, "tap_abs_sum": centre}]
    loco = RunConfig("digits", "vgg13", "loco", 0, gamma=0.5, eta=2.0)
    assert realized_factor(loco, record) == pytest.approx(0.5 / z)
    # |w|: 9 units spread evenly (factor 1) and 4 at the centre (0.5 / Z)
    assert realized_factor(loco, record, "abs") == pytest.approx((9 + 4 * 0.5 / z) / 13)
    assert realized_factor(loco.replace(regularizer="loco_permuted"), record) == pytest.approx(1 / z)
    assert realized_factor(RunConfig("digits", "vgg13", "l2", 0), record) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no 'tap_sq_sum'.*weighting='abs'"):
        realized_factor(loco, [{"k": 3, "tap_abs_sum": even}])
