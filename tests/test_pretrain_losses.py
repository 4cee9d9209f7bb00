"""Each pretraining loss on a case small enough to check by hand, and where gradients go."""

import math

import pytest
import torch
from skysense_fast import models
from skysense_fast.pretrain import (
    DINOHead,
    SkySensePretrainer,
    distill_loss,
    info_nce,
    make_teacher,
    object_assign,
    object_pool,
    update_bank,
)
from skysense_fast.pretrain.augment import align, collate, make_view, to_canonical
from skysense_fast.pretrain.config import LossSection
from skysense_fast.pretrain.synthetic import SyntheticMultimodal


def test_distill_uniform_teacher_is_log_k():
    t = torch.full((3, 4), 0.7)
    s = torch.zeros(3, 4)
    assert distill_loss(s, t, torch.zeros(4), 0.1, 0.04).item() == pytest.approx(math.log(4), abs=1e-6)


def test_distill_sharp_teacher_known_value():
    t = torch.tensor([[0.0, 10.0]])                 # /0.04: target (e^-250, 1) = one-hot
    s = torch.tensor([[0.0, 0.1 * math.log(3)]])   # /0.1: softmax (1/4, 3/4)
    assert distill_loss(s, t, torch.zeros(2), 0.1, 0.04).item() == pytest.approx(-math.log(0.75), abs=1e-6)


def test_distill_centre_is_subtracted():
    t = torch.tensor([[2.0, 0.0]])
    # centred teacher (0, 0) -> uniform target; student uniform -> log 2
    assert distill_loss(torch.zeros(1, 2), t, torch.tensor([2.0, 0.0]), 0.1, 0.04).item() == pytest.approx(math.log(2))


def test_distill_mean_of_sample_means():
    # rows 0, 1 belong to sample 0 (losses log 2 and -log 3/4); row 2 to sample 1 (log 2); sample 2 has no rows
    s = torch.tensor([[0.0, 0.0], [0.0, 0.1 * math.log(3)], [0.0, 0.0]])
    t = torch.tensor([[1.0, 1.0], [0.0, 10.0], [5.0, 5.0]])
    got = distill_loss(s, t, torch.zeros(2), 0.1, 0.04, sample=torch.tensor([0, 0, 1]), num_samples=3).item()
    want = ((math.log(2) - math.log(0.75)) / 2 + math.log(2) + 0) / 3
    assert got == pytest.approx(want, abs=1e-6)
    w = torch.tensor([1.0, 3.0, 1.0])           # weights within a sample
    got = distill_loss(s, t, torch.zeros(2), 0.1, 0.04, weight=w, sample=torch.tensor([0, 0, 1]), num_samples=2).item()
    assert got == pytest.approx(((math.log(2) - 3 * math.log(0.75)) / 4 + math.log(2)) / 2, abs=1e-6)


def test_distill_teacher_gets_no_gradient():
    s = torch.randn(5, 8, requires_grad=True)
    t = torch.randn(5, 8, requires_grad=True)
    distill_loss(s, t, torch.zeros(8), 0.1, 0.04).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


def test_info_nce_known_value():
    z = torch.eye(2)[None]
    # logits [[1, 0], [0, 1]]: each row -log(e / (e + 1)) = log(1 + 1/e), both directions alike
    assert info_nce(z, z, 1.0).item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    with pytest.raises(ValueError, match="N >= 2"):
        info_nce(z[:, :1], z[:, :1], 1.0)


def test_object_pool_known_values():
    f = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])                               # (B=1, C=1, P=4)
    q = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])
    obj, mass = object_pool(f, q)
    assert obj[0, :, 0].tolist() == [1.5, 3.5] and mass[0].tolist() == [2.0, 2.0]
    obj, mass = object_pool(f, q, torch.tensor([[False, True, True, True]]))
    assert obj[0, :, 0].tolist() == [2.0, 3.5] and mass[0].tolist() == [1.0, 2.0]


def test_object_assign_groups_by_content():
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    f = torch.empty(1, 3, 4, 4)
    f[0, :, :, :2] = a[:, None, None]     # left half a, right half b
    f[0, :, :, 2:] = b[:, None, None]
    q = object_assign(f, 2)               # seeds: 2 x 2 quadrants (row-major): left seeds 0, 2
    assert q.shape == (1, 16, 4)
    torch.testing.assert_close(q.sum(-1), torch.ones(1, 16))
    left = q[0].reshape(4, 4, 4)[:, :2].reshape(-1, 4)
    right = q[0].reshape(4, 4, 4)[:, 2:].reshape(-1, 4)
    torch.testing.assert_close(left[:, [1, 3]].sum(-1), torch.zeros(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(right[:, [0, 2]].sum(-1), torch.zeros(8), atol=1e-5, rtol=0)


def test_bank_update_known_value_and_no_gradient():
    bank = torch.zeros(4, 1, 2)
    bank[:, 0, 0] = 1.0                                       # every prototype e1
    f = torch.zeros(1, 2, 2, 2, requires_grad=True)
    with torch.no_grad():
        f[:, 1] = 1.0                                         # every pixel e2
    regions = update_bank(bank, f, torch.tensor([[-89.0, -179.0]]), momentum=0.5)  # region 0 of a 2 x 2 grid
    assert regions.tolist() == [0]
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(bank[0, 0], torch.tensor([s, s]))
    torch.testing.assert_close(bank[1:, 0], torch.tensor([[1.0, 0.0]] * 3))  # other regions untouched
    assert not bank.requires_grad


def test_dino_head_outputs_cosines():
    h = DINOHead(8, 5, hidden=16, bottleneck=4)
    y = h(torch.randn(3, 8))
    assert y.shape == (3, 5) and y.abs().max() <= 1 + 1e-6


def _canonical_views():
    ds = SyntheticMultimodal(samples=4, grid=6, s2_frames=3, s1_frames=2)
    coords = torch.arange(36.0).reshape(6, 6)
    sample = ds[0]
    sample["s2"] = coords.expand(3, 10, 6, 6).clone()
    sample["hr"] = torch.kron(coords, torch.ones(32, 32)).expand(3, -1, -1).clone()
    return sample, coords


@pytest.mark.parametrize("seed", range(6))
def test_views_keep_modalities_aligned_and_alignment_inverts(seed):
    sample, coords = _canonical_views()
    g = torch.Generator().manual_seed(seed)
    (va, ga), (vb, gb) = make_view(sample, 4, 1, g), make_view(sample, 4, 1, g)
    for v, geom in ((va, ga), (vb, gb)):
        top, left = int(geom[0]), int(geom[1])
        s2 = to_canonical(v["s2"][None, :, :1], geom[None])[0, 0, 0]          # undo rotation / flip
        torch.testing.assert_close(s2, coords[top:top + 4, left:left + 4], atol=0.3, rtol=0.06)  # noise, gains
        hr = to_canonical(v["hr"][None, :1], geom[None])[0, 0]
        pooled = torch.nn.functional.avg_pool2d(hr[None, None], 32)[0, 0]
        corr = torch.corrcoef(torch.stack([pooled.flatten(), s2.flatten()]))[0, 1]
        assert corr > 0.99                                                     # same crop, same orientation
    a = coords[int(ga[0]):int(ga[0]) + 4, int(ga[1]):int(ga[1]) + 4]
    b = coords[int(gb[0]):int(gb[0]) + 4, int(gb[1]):int(gb[1]) + 4]
    y, mask = align(a[None, None], ga[None], gb[None])                       # a's crop onto b's grid
    assert mask.any() == bool((abs(ga[:2] - gb[:2]) < 4).all())
    torch.testing.assert_close(y[0, 0][mask[0]], b[mask[0]])
    assert (y[0, 0][~mask[0]] == 0).all()


def test_views_acquisition_subsets():
    ds = SyntheticMultimodal(samples=2, grid=4, s2_frames=6, s1_frames=6)
    sample = ds[1]
    sample["valid_s2"] = torch.tensor([True, True, False, True, True, True])
    for seed in range(10):
        v, _ = make_view(sample, 4, 2, torch.Generator().manual_seed(seed))
        assert v["valid_s2"].sum() >= 2 and not (v["valid_s2"] & ~sample["valid_s2"]).any()


def _tiny_pretrainer():
    torch.manual_seed(0)
    student = SkySensePretrainer(models.create("skysense-tiny"), LossSection(out_dim=16, head_hidden=16,
                                                                              head_bottleneck=8, cma_dim=8))
    teacher = make_teacher(student)
    ds = SyntheticMultimodal(samples=2, grid=4, s2_frames=2, s1_frames=2)
    g = torch.Generator().manual_seed(0)
    pairs = [[make_view(ds[i], 4, 1, g) for i in range(2)] for _ in range(2)]
    views = [collate([p[0] for p in vs]) for vs in pairs]
    geoms = [torch.stack([p[1] for p in vs]) for vs in pairs]
    return student, teacher, views, geoms


def _grads(module):
    return {n for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


@pytest.mark.parametrize("part, must, must_not", [
    ("cma", ("backbone.hr.", "backbone.s2.", "backbone.s1.", "backbone.head_s2.", "cma.hr.", "cma.s2.", "cma.s1."),
     ("backbone.fusion.", "heads.", "backbone.ctpe.")),
    ("fused_image", ("backbone.fusion.", "backbone.hr.", "backbone.s2.", "heads.fused_image."),
     ("heads.modal_", "heads.fused_pixel.", "cma.")),
    ("hr_pixel", ("backbone.hr.", "heads.modal_pixel."), ("backbone.s2.", "backbone.s1.", "backbone.fusion.", "cma.",
                                                          "heads.fused_", "heads.modal_image.")),
    ("s2_object", ("backbone.s2.", "backbone.head_s2.", "heads.modal_object."), ("backbone.hr.", "backbone.s1.",
                                                                                 "backbone.fusion.", "heads.fused_")),
])
def test_gradient_reaches_what_it_should(part, must, must_not):
    student, teacher, views, geoms = _tiny_pretrainer()
    bank = student.backbone.geo.prototypes.clone()
    parts = student(views, geoms, teacher, 0.04, torch.Generator().manual_seed(0))
    parts[part].backward()
    got = _grads(student)
    for prefix in must:
        assert any(n.startswith(prefix) for n in got), f"{part}: no gradient reaches {prefix}"
    for prefix in must_not:
        assert not any(n.startswith(prefix) for n in got), f"{part}: gradient leaks into {prefix}"
    assert not any(p.grad is not None for p in teacher.parameters())
    assert not torch.equal(bank, student.backbone.geo.prototypes)       # the bank moved, without gradient
    assert not student.backbone.geo.prototypes.requires_grad


def test_total_is_the_weighted_sum():
    student, teacher, views, geoms = _tiny_pretrainer()
    parts = student(views, geoms, teacher, 0.04, torch.Generator().manual_seed(0))
    mgcl = sum(parts[f"{s}_{lvl}"] for s in ("hr", "s2", "s1", "fused") for lvl in ("pixel", "object", "image"))
    torch.testing.assert_close(parts["mgcl"], mgcl)
    torch.testing.assert_close(parts["total"], parts["mgcl"] + parts["cma"])


def test_layer_decay_and_no_decay_groups():
    from skysense_fast.train.optim import build_scheduler, param_groups

    student, _, _, _ = _tiny_pretrainer()
    groups = param_groups(student, 0.04, 0.5)
    where = {n: (g["lr_scale"], g["weight_decay"]) for g in groups for n in g["names"]}
    assert len(where) == sum(1 for _ in student.parameters())
    assert where["backbone.s2.patch_embed.projection.weight"] == (0.25, 0.04)     # vit depth 2: 0.5 ** 2
    assert where["backbone.s2.layers.0.ffn.layers.0.0.weight"] == (0.5, 0.04)
    assert where["backbone.s1.layers.1.ln1.weight"] == (1.0, 0.0)                 # norms: no weight decay
    assert where["backbone.s2.cls_token"][1] == 0.0 and where["backbone.s2.pos_embed"][1] == 0.0
    assert where["backbone.hr.patch_embed.projection.weight"][0] == 0.5 ** 8      # 8 Swin blocks
    assert where["backbone.hr.stages.0.blocks.0.ffn.layers.0.0.weight"][0] == 0.5 ** 7
    assert where["backbone.hr.stages.1.downsample.reduction.weight"][0] == 0.5 ** 5   # with block 3 of 8
    assert where["backbone.fusion.layers.0.attn.attn.in_proj_weight"] == (1.0, 0.04)
    assert where["backbone.ctpe.ctpe"] == (1.0, 0.0) and where["heads.fused_pixel.prototypes"] == (1.0, 0.04)
    from skysense_fast.config import OptimSection
    from skysense_fast.train.optim import build_optimizer

    opt = build_optimizer(student, OptimSection(lr=1.0, min_lr=0.0, warmup_steps=2, layer_decay=0.5))
    sched = build_scheduler(opt, OptimSection(lr=1.0, min_lr=0.0, warmup_steps=2), total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(max(g["lr"] for g in opt.param_groups))
        opt.step()
        sched.step()
    # warmup 1/2, 2/2, then cosine from 1 to 0 over the remaining 4 steps
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))])


def test_pixel_subset_is_per_sample_and_batch_independent():
    from skysense_fast.pretrain.objective import pixel_subset

    g = torch.Generator().manual_seed(0)
    ok = torch.rand(3, 2, 4, 4, generator=g) > 0.3
    ok[2] = False
    ok[2, 0, 0, :3] = True                                      # sample 2: only 3 candidates
    index = torch.tensor([10, 11, 12])
    sel = pixel_subset(ok, index, 0.25, 5)
    assert (sel & ~ok).sum() == 0
    assert sel.flatten(1).sum(1).tolist() == [5, 5, 3]
    alone = pixel_subset(ok[1:2], index[1:2], 0.25, 5)          # the same sample in another batch
    assert torch.equal(alone[0], sel[1])
    assert not torch.equal(pixel_subset(ok, index, 0.75, 5), sel)   # another step, another pick
    assert torch.equal(pixel_subset(ok, index, 0.25, 0), ok)          # 0 = all


def test_pixel_samples_bound_the_pixel_rows(monkeypatch):
    from skysense_fast.pretrain import objective

    student, teacher, views, geoms = _tiny_pretrainer()
    student.loss_cfg = LossSection(out_dim=16, head_hidden=16, head_bottleneck=8, cma_dim=8, pixel_samples=3)
    seen = []
    real = objective.distill_loss

    def spy(s, t, *a, **k):
        seen.append(s.shape[0])
        return real(s, t, *a, **k)

    monkeypatch.setattr(objective, "distill_loss", spy)
    parts = student(views, geoms, teacher, 0.04, torch.Generator().manual_seed(0))
    assert torch.isfinite(parts["total"])
    assert max(seen[0::3]) <= 3 * views[0]["hr"].shape[0]      # pixel rows: <= 3 per sample


def test_sinkhorn_centering_balances_the_teacher():
    from skysense_fast.pretrain.losses import teacher_targets

    g = torch.Generator().manual_seed(0)
    t = torch.randn(64, 8, generator=g) * 0.1
    t[:, 0] += 1.0                                               # every row prefers prototype 0
    ema = teacher_targets(t, torch.zeros(8), 0.1, "ema")
    sk = teacher_targets(t, torch.zeros(8), 0.1, "sinkhorn", 3)
    torch.testing.assert_close(sk.sum(1), torch.ones(64))
    assert ema.sum(0)[0] > 0.9 * 64                              # collapsed onto one prototype
    torch.testing.assert_close(sk.sum(0), torch.full((8,), 64 / 8), rtol=0.05, atol=0.05)  # equal shares
    assert teacher_targets(t[:0], torch.zeros(8), 0.1, "sinkhorn").shape == (0, 8)


def test_sinkhorn_centering_in_the_objective():
    student, teacher, views, geoms = _tiny_pretrainer()
    student.loss_cfg = LossSection(out_dim=16, head_hidden=16, head_bottleneck=8, cma_dim=8, centering="sinkhorn")
    parts = student(views, geoms, teacher, 0.04, torch.Generator().manual_seed(0))
    assert torch.isfinite(parts["total"])
    parts["total"].backward()
    assert student.heads["fused_pixel"].prototypes.grad is not None
