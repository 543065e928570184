"""The contract of every defense in ``burn.defenses.DEFENSES``, checked on each one for being
registered (with its ``FAST`` settings): it purifies a copy and leaves the caller's model and
data as they were, the same seed gives the same weights, and its choices read neither the
ground truth (``data.truth``) nor the test sets (``evaluate``, which is for reports only)."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from defense_fixtures import FAST, calibrated_model, random_data, state

from burn.defenses import DEFENSES
from burn.defenses.base import DefenderData


# On top of FAST: ANP accepts any held-out ACC (its tolerance is relative to an ACC of one
# random image in 13), so it prunes; whether pruning its first three neurons loses that one
# image differs between CPUs, and with it whether the run is a no-op.
CONTRACT = {"anp": {"acc_ratio": 2.0}}


def _data(truth: bool) -> DefenderData:
    """64 random images (``random_data``) with what a distance-based defense needs (DeepFool
    norms, on which the poisoned tenth sits farthest, and adversarial labels) and, with
    ``truth``, the ground truth."""
    data = random_data(64)
    labels = data.train.labels
    mask = torch.arange(len(labels)) % 10 == 0
    norms = torch.rand(len(labels), generator=torch.Generator().manual_seed(2)) + mask
    return dataclasses.replace(
        data, distances={"norms": norms, "adv_labels": (labels + 1) % 10},
        truth={"poison_mask": mask, "original_labels": torch.where(mask, (labels + 3) % 10, labels)}
        if truth else {})


def _run(name: str, truth: bool = True, test_sets: bool = False):
    """The caller's model, its state and training images before, and the purified model of
    one run. With ``test_sets``, a defense with ``eval_every`` reports every step, through an
    ``evaluate`` whose numbers fall with each call whatever the model (a choice made from them
    would differ from one made without them)."""
    defense = DEFENSES[name](**FAST.get(name, {}), **CONTRACT.get(name, {}))
    evaluate = None
    if test_sets:
        if "eval_every" in {f.name for f in dataclasses.fields(defense)}:
            defense = dataclasses.replace(defense, eval_every=1)
        calls = []

        def evaluate(m):
            calls.append(1)
            return {"acc": 0.9 ** len(calls), "asr": 0.5 ** len(calls), "ra": 0.1}

    model, data = calibrated_model(), _data(truth)
    before, images = state(model), data.train.images.clone()
    purified, report = defense(model, data, evaluate=evaluate)
    assert isinstance(report, dict)
    return SimpleNamespace(model=model, before=before, data=data, images=images, purified=purified)


@pytest.fixture(scope="module", params=sorted(DEFENSES))
def runs(request):
    """Per defense: a run with the ground truth, the same again, and one without the ground
    truth that reports on (stand-in) test sets."""
    name = request.param
    return SimpleNamespace(first=_run(name), again=_run(name),
                           blind=_run(name, truth=False, test_sets=True))


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_purifies_a_copy_and_leaves_the_callers_model_and_data(runs):
    r = runs.first
    after = r.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in r.before.items())  # running statistics too
    assert torch.equal(r.data.train.images, r.images)
    assert r.purified is not r.model and type(r.purified) is type(r.model)
    assert not r.purified.training
    purified = r.purified.state_dict()
    assert any(not torch.equal(purified[k], v) for k, v in r.before.items())  # not a no-op


def test_same_seed_same_weights(runs):
    assert _same(runs.first.purified, runs.again.purified)


def test_reads_neither_the_ground_truth_nor_the_test_sets(runs):
    """Without ``data.truth``, and reporting on the test sets, the weights are those of the
    run with the truth and without ``evaluate``."""
    assert _same(runs.first.purified, runs.blind.purified)
