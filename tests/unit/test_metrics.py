import pytest
import torch

from burn.data import ImageDataset
from burn.metrics import accuracy, attack_success_rate, evaluate, robust_accuracy


def test_metric_definitions_on_hand_made_predictions():
    labels = torch.tensor([0, 1, 2, 3])
    assert accuracy(torch.tensor([0, 1, 0, 0]), labels) == 0.5
    # poisoned test set: true labels 1,2,3,4; target 0
    preds = torch.tensor([0, 0, 3, 4])
    true = torch.tensor([1, 2, 3, 4])
    assert attack_success_rate(preds, 0) == 0.5
    assert robust_accuracy(preds, true) == 0.5
    with pytest.raises(AssertionError):
        accuracy(torch.zeros(3), torch.zeros(4))


class _Fixed(torch.nn.Module):
    """Predicts class 0 when the bottom-right pixel is white, else the mean-intensity class."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.zeros(len(x), 10)
        trig = x[:, 0, -1, -1] > 0.99
        out[trig, 0] = 1
        out[~trig, 5] = 1
        return out + 0 * self.w


def test_evaluate_uses_target_and_true_labels():
    x = torch.zeros(4, 3, 4, 4, dtype=torch.uint8)
    clean = ImageDataset(x, torch.tensor([5, 5, 1, 2]), tuple("abcdefghij"), "t")
    xt = x.clone()
    xt[:3, :, -1, -1] = 255
    poisoned = ImageDataset(xt, torch.tensor([5, 1, 2, 5]), tuple("abcdefghij"), "t")
    m = evaluate(_Fixed(), clean, poisoned, target=0)
    assert m == {"acc": 0.5, "asr": 0.75, "ra": 0.25}


def test_attack_metrics_by_class_on_hand_made_predictions():
    from burn.metrics import attack_metrics_by_class

    true = torch.tensor([1, 1, 1, 1, 2, 2])
    preds = torch.tensor([0, 0, 0, 1, 0, 3])
    rows = attack_metrics_by_class(preds, true, target=0, classes=["t", "a", "b", "c"])
    assert rows == [{"true_label": 1, "class": "a", "n": 4, "asr": 0.75, "ra": 0.25},
                    {"true_label": 2, "class": "b", "n": 2, "asr": 0.5, "ra": 0.0}]
