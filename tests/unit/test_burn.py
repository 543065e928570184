from dataclasses import asdict, replace

import pytest
import torch

from defense_fixtures import FAST

from burn.defenses.burn import Burn, defend, prediction_divergence, schedule
from burn.models import create_model

CFG = Burn(**FAST["burn"])


def test_schedule_is_linear_from_phase1_to_T():
    cfg = Burn()
    assert schedule(cfg, 0) == (0.0, 0.005, 0.025)
    lam, a, b = schedule(cfg, 5)
    assert lam == 1.0 and a == pytest.approx(0.01) and b == pytest.approx(0.05)
    lam, a, b = schedule(cfg, 2)
    assert lam == pytest.approx(0.4) and a == pytest.approx(0.007) and b == pytest.approx(0.035)


def test_divergences():
    a = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 2.0, -1.0], [0.0, 0.0, 0.0]])
    for kind in ("kl", "js", "l2"):
        d = prediction_divergence(a, a, kind)
        assert torch.allclose(d, torch.zeros(2), atol=1e-6)
        d = prediction_divergence(a, b, kind)
        assert d[0] > 0.1 and d[1] == pytest.approx(0.0, abs=1e-6)
    p, q = a.softmax(1)[0], b.softmax(1)[0]
    assert prediction_divergence(a, b, "kl")[0] == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-5)
    torch.testing.assert_close(prediction_divergence(a, b, "js"), prediction_divergence(b, a, "js"))
    with pytest.raises(ValueError):
        prediction_divergence(a, b, "cosine")


def _setup(n=200):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    original = torch.arange(n) % 10
    mask = torch.zeros(n, dtype=torch.bool)
    mask[::10] = True  # 20 poisoned samples (also target-class ones here: only the report reads it)
    labels = torch.where(mask, torch.zeros_like(original), original)
    norms = torch.rand(n, generator=g) * 0.5
    norms[mask] += 1.0  # the poisoned samples sit farthest from the boundary
    adv = torch.where(mask, original, (original + 1) % 10)
    torch.manual_seed(0)
    model = create_model("preactresnet18", 10, width=4)
    return model, images, labels, original, mask, norms, adv


def test_defend_selects_by_distance_and_reports():
    model, images, labels, original, mask, norms, adv = _setup()
    calls = []

    def evaluate(m):
        calls.append(m.training)
        return {"acc": 0.5, "asr": 0.25, "ra": 0.125}

    _, report = defend(model, images, labels, CFG, norms=norms, adv_labels=adv,
                       poison_mask=mask, original_labels=original, evaluate=evaluate)
    its = report.iterations
    assert [it.t for it in its] == [0, 1, 2]
    assert its[0].n_poison_set == 10 and its[0].n_clean_set == 0  # phase 1: 5% of 200
    assert its[2].n_poison_set == 20 and its[2].n_clean_set == 40
    assert its[0].precision == 1.0 and its[0].recall == 0.5 and its[0].revert_share == 1.0
    assert its[0].poison_set_label_counts and sum(its[0].poison_set_label_counts.values()) == 10
    assert its[1].lam == 0.5 and its[2].lam == 1.0
    assert all(it.acc == 0.5 and it.asr == 0.25 for it in its) and report.before["acc"] == 0.5
    assert calls == [False] * 4  # evaluated in eval mode: before + 3 iterations
    d = report.to_dict()
    assert d["iterations"][1]["poisoned_in_clean_set"] is not None and d["wall_s"] > 0


def test_unknown_divergence_is_rejected():
    model, images, labels, _, _, norms, adv = _setup(40)
    with pytest.raises(ValueError, match="divergence"):
        defend(model, images, labels, Burn(divergence="cos"), norms=norms, adv_labels=adv)


def test_suspect_class_selection_is_opt_in_and_draws_from_one_class():
    from burn.defenses.burn import suspect_class

    model, images, labels, original, mask, norms, adv = _setup()
    assert suspect_class(norms, labels) == 0  # the poisoned samples carry label 0 and sit far
    far_clean = (~mask) & (labels == 3)
    norms = norms.clone()
    norms[far_clean.nonzero().squeeze(1)[:5]] += 10  # a few very far clean samples of class 3
    _, rep = defend(model, images, labels, CFG, norms=norms, adv_labels=adv, poison_mask=mask)
    assert rep.iterations[0].precision == 0.5 and rep.suspect_class is None  # global: 5 of 10 clean
    _, rep = defend(model, images, labels, replace(CFG, selection="suspect_class"),
                    norms=norms, adv_labels=adv, poison_mask=mask)
    assert rep.suspect_class == 0 and rep.iterations[0].precision == 1.0


def test_phase1_clean_set_is_opt_in_and_keeps_existing_keys():
    from burn.cache import config_hash

    model, images, labels, _, mask, norms, adv = _setup()
    _, rep = defend(model, images, labels, replace(CFG, phase1_clean_set=True),
                    norms=norms, adv_labels=adv, poison_mask=mask)
    it0 = rep.iterations[0]
    assert it0.n_poison_set == 10 and it0.n_clean_set == 20  # beta_0 = 10% of 200, by distance
    assert it0.poisoned_in_clean_set == 0  # the bottom of the ranking: the poison sits far
    # at their defaults the options added later are left out of config hashes, so committed
    # results stay valid
    later = ("phase1_clean_set", "lambda_end", "min_spread_gap", "min_coverage", "keep_suspect_class",
             "clean_set_outside_suspect", "distill_keep", "distill_temperature",
             "distill_ignore_suspect")
    assert config_hash(Burn()) == config_hash({k: v for k, v in Burn().__dict__.items()
                                               if k not in later})
    assert config_hash(Burn(phase1_clean_set=True)) != config_hash(Burn())
    assert config_hash(Burn(lambda_end=0.5)) != config_hash(Burn())


def test_lambda_end_scales_the_divergence_weight():
    from burn.defenses.burn import schedule

    assert [schedule(Burn(iterations=4), t)[0] for t in range(5)] == [0, 0.25, 0.5, 0.75, 1.0]
    assert [schedule(Burn(iterations=4, lambda_end=0.5), t)[0] for t in range(5)] == \
        [0, 0.125, 0.25, 0.375, 0.5]


def test_random_selection_ignores_the_ranking_and_is_seeded():
    model, images, labels, _, mask, norms, adv = _setup()
    cfg = replace(CFG, selection="random")
    _, rep = defend(model, images, labels, cfg, norms=norms, adv_labels=adv, poison_mask=mask)
    _, rep2 = defend(model, images, labels, cfg, norms=norms, adv_labels=adv, poison_mask=mask)
    # the ranked draw takes the 10 farthest (all poison); a uniform draw of 10 of 200 with
    # 10% poison holds about one
    assert rep.iterations[0].n_poison_set == 10 and rep.iterations[0].precision < 1.0
    assert [asdict(i)["precision"] for i in rep.iterations] == \
           [asdict(i)["precision"] for i in rep2.iterations]


def test_spread_class_finds_the_label_whose_adversarial_labels_scatter():
    from burn.defenses.burn import spread_class

    # class 0 holds poison from every class (adversarial labels 1-9); classes 1-9 each fall
    # back to one neighbour
    labels = torch.arange(10).repeat_interleave(90)
    adv = (labels + 1) % 10
    adv[:90] = torch.arange(1, 10).repeat(10)
    cls, gap = spread_class(adv, labels)
    assert cls == 0 and gap == pytest.approx(torch.log(torch.tensor(9.0)).item(), rel=1e-6)


def test_spread_class_declines_without_a_standout_label_and_leaves_the_model():
    model, images, labels, _, mask, norms, _ = _setup()
    adv = (labels + 1) % 10  # every class falls back to one neighbour: nothing stands out
    cfg = replace(CFG, selection="spread_class")
    purified, rep = defend(model, images, labels, cfg, norms=norms, adv_labels=adv, poison_mask=mask)
    assert rep.iterations == [] and rep.suspect_class is None and rep.spread_gap == 0.0
    for a, b in zip(model.state_dict().values(), purified.state_dict().values()):
        assert torch.equal(a, b)


def test_coverage_class_finds_the_label_that_holds_every_other_class():
    from burn.defenses.burn import coverage_class

    # class 0: half its samples fall back to one of classes 1-9 each (dirty-label poison);
    # every other class falls to two neighbours only
    labels = torch.arange(10).repeat_interleave(180)
    adv = torch.where(torch.arange(len(labels)) % 2 == 0, (labels + 1) % 10, (labels + 2) % 10)
    adv[:90] = torch.arange(1, 10).repeat(10)
    cls, top, second = coverage_class(adv, labels)
    assert cls == 0 and top == pytest.approx(10 / 180) and second == 0.0
    # a clean class whose samples reach only some classes never passes the guard's share
    assert coverage_class((labels + 1) % 10, labels)[1] == 0.0 < Burn().min_coverage


def test_coverage_class_declines_on_a_clean_like_model_and_leaves_it():
    model, images, labels, _, mask, norms, _ = _setup()
    adv = (labels + 1) % 10
    cfg = replace(CFG, selection="coverage_class", keep_suspect_class=True)
    purified, rep = defend(model, images, labels, cfg, norms=norms, adv_labels=adv, poison_mask=mask)
    assert rep.iterations == [] and rep.suspect_class is None
    assert rep.to_dict()["coverage"] == {"suspect": 0.0, "next": 0.0}
    for a, b in zip(model.state_dict().values(), purified.state_dict().values()):
        assert torch.equal(a, b)


def test_keep_suspect_class_fine_tunes_the_class_under_its_own_label_too():
    from burn.defenses.burn import _keep_suspect

    score = torch.arange(10.0)
    eligible = torch.tensor([True] * 6 + [False] * 4)
    p_idx, c_idx = torch.tensor([5, 4]), torch.tensor([0, 6])
    kept = _keep_suspect(score, eligible, p_idx, c_idx)
    assert kept.tolist() == [1, 2]  # as many as P_t, the class's lowest scores outside P_t and C_t
    model, images, labels, _, mask, norms, adv = _setup()
    cfg = replace(CFG, selection="suspect_class", keep_suspect_class=True)
    _, rep = defend(model, images, labels, cfg, norms=norms, adv_labels=adv, poison_mask=mask)
    _, plain = defend(model, images, labels, replace(cfg, keep_suspect_class=False), norms=norms,
                      adv_labels=adv, poison_mask=mask)
    added = [i.n_clean_set - j.n_clean_set for i, j in zip(rep.iterations, plain.iterations)]
    # |P_t| more, while the class (38 samples here) has that many left outside P_t and C_t
    assert added[0] == rep.iterations[0].n_poison_set
    assert all(0 <= a <= i.n_poison_set for a, i in zip(added, rep.iterations))
    from burn.cache import config_hash

    assert config_hash(Burn(min_coverage=0.03, keep_suspect_class=False)) == config_hash(Burn())


def test_clean_set_outside_suspect_keeps_the_suspect_class_out_of_c_t():
    """With a class selection, C_t holds no sample of the suspect class (where dirty-label
    poison sits under its given label); without one the option changes nothing; its default
    leaves committed keys as they are."""
    from burn.cache import config_hash

    model, images, labels, _, mask, norms, adv = _setup()
    cfg = replace(CFG, selection="suspect_class", clean_set_outside_suspect=True)
    _, rep = defend(model, images, labels, cfg, norms=norms, adv_labels=adv, poison_mask=mask)
    assert rep.suspect_class is not None and len(rep.iterations) == CFG.iterations + 1
    assert all(it.n_clean_set > 0 and it.poisoned_in_clean_set == 0 for it in rep.iterations[1:])
    import burn.defenses.burn as burn_module

    seen = []
    real = burn_module.finetune

    def spy(model, images_, y, cfg_, gen, **kw):
        seen.append(y)
        return real(model, images_, y, cfg_, gen, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(burn_module, "finetune", spy)
        defend(model, images, labels, cfg, norms=norms, adv_labels=adv, poison_mask=mask)
    for it, y in zip(rep.iterations, seen):  # C_t's labels follow P_t's in each fine-tuning set
        assert not (y[it.n_poison_set:] == rep.suspect_class).any()
    glob, _ = defend(model, images, labels, replace(CFG, clean_set_outside_suspect=True),
                     norms=norms, adv_labels=adv, poison_mask=mask)
    plain, _ = defend(model, images, labels, CFG, norms=norms, adv_labels=adv, poison_mask=mask)
    for a, b in zip(glob.state_dict().values(), plain.state_dict().values()):
        assert torch.equal(a, b)  # the global selection has no suspect class: nothing changes
    assert config_hash(Burn(clean_set_outside_suspect=False)) == config_hash(Burn())
    assert config_hash(Burn(clean_set_outside_suspect=True)) != config_hash(Burn())


def test_soft_target_loss_is_cross_entropy_on_one_hot_rows_and_distillation_on_soft_ones():
    from burn.defenses.burn import hard_targets, soft_target_loss

    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(6, 10, generator=g), torch.arange(6)
    assert torch.allclose(soft_target_loss(logits, hard_targets(y, 10)),
                          torch.nn.functional.cross_entropy(logits, y))
    teacher, temp = torch.randn(6, 10, generator=g), 4.0
    soft = torch.softmax(teacher / temp, 1)
    target = torch.cat([soft, torch.full((6, 1), temp)], 1)
    expected = temp ** 2 * (soft * (soft.log() - torch.log_softmax(logits / temp, 1))).sum(1).mean()
    assert torch.allclose(soft_target_loss(logits, target), expected)


def test_distill_keep_trains_on_other_labels_soft_outputs_and_needs_a_class_selection():
    """K holds only samples outside the suspect class, fine-tuned towards the frozen model's
    tempered predictions beside P_t and C_t; off by default (committed keys unchanged); under
    the global selection it is refused, since K would hold the target label's poison."""
    from burn.cache import config_hash
    import burn.defenses.burn as burn_module

    model, images, labels, _, mask, norms, adv = _setup()
    cfg = replace(CFG, selection="suspect_class", distill_keep=30)
    seen = []
    real = burn_module.finetune

    def spy(model_, images_, y, cfg_, gen, **kw):
        seen.append((images_, y))
        return real(model_, images_, y, cfg_, gen, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(burn_module, "finetune", spy)
        _, rep = defend(model, images, labels, cfg, norms=norms, adv_labels=adv, poison_mask=mask)
    assert rep.suspect_class == 0 and len(seen) == CFG.iterations + 1
    for it, (x, y) in zip(rep.iterations, seen):
        n_hard = it.n_poison_set + it.n_clean_set
        assert y.shape == (n_hard + 30, 11)
        assert torch.all(y[:n_hard, -1] == 1) and torch.all(y[n_hard:, -1] == 4.0)
        assert torch.allclose(y[:, :-1].sum(1), torch.ones(len(y)))
    keep_images = seen[0][0][-30:]
    assert torch.equal(keep_images, seen[-1][0][-30:])  # drawn once
    in_class = images[labels == 0]
    assert not any(torch.equal(k, c) for k in keep_images for c in in_class)
    with pytest.raises(ValueError, match="class selection"):
        defend(model, images, labels, replace(CFG, distill_keep=30), norms=norms, adv_labels=adv)
    assert config_hash(Burn(distill_keep=0, distill_temperature=4.0)) == config_hash(Burn())


def test_distill_ignore_suspect_leaves_the_class_out_of_targets_and_outputs():
    """A NaN target entry drops its class from both distributions: the loss equals KL over the
    other classes, its gradient never reaches the ignored logit, and K's targets carry NaN in
    the suspect column only. Without K the option is refused."""
    from burn.cache import config_hash
    from burn.defenses.burn import distill_keep_set, soft_target_loss

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 10, generator=g, requires_grad=True)
    soft = torch.softmax(torch.randn(5, 9, generator=g) / 4.0, 1)
    target = torch.cat([torch.full((5, 1), float("nan")), soft, torch.full((5, 1), 4.0)], 1)
    loss = soft_target_loss(logits, target)
    expected = 16 * (soft * (soft.log() - torch.log_softmax(logits[:, 1:] / 4.0, 1))).sum(1).mean()
    assert torch.allclose(loss, expected)
    loss.backward()
    assert torch.all(logits.grad[:, 0] == 0) and torch.isfinite(logits.grad).all()
    model, images, labels, _, mask, norms, adv = _setup()
    cfg = replace(CFG, selection="suspect_class", distill_keep=30, distill_ignore_suspect=True)
    idx, k_targets = distill_keep_set(cfg, model.eval(), images, labels, 0)
    assert k_targets[:, 0].isnan().all() and not k_targets[:, 1:].isnan().any()
    assert torch.allclose(k_targets[:, 1:-1].sum(1), torch.ones(30))
    purified, rep = defend(model, images, labels, cfg, norms=norms, adv_labels=adv,
                           poison_mask=mask)
    assert len(rep.iterations) == CFG.iterations + 1
    assert all(torch.isfinite(p).all() for p in purified.parameters())
    with pytest.raises(ValueError, match="set distill_keep"):
        defend(model, images, labels, replace(CFG, distill_ignore_suspect=True), norms=norms,
               adv_labels=adv)
    assert config_hash(Burn(distill_ignore_suspect=False)) == config_hash(Burn())
