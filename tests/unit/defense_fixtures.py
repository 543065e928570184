"""What the defense tests share: random defender data, tiny models, state snapshots."""

import torch

from burn.data import ImageDataset
from burn.defenses.base import DefenderData
from burn.models import create_model

# Tiny settings of each registered defense, a few seconds a run on ``random_data``; a defense
# not named here runs with its defaults.
FAST = {
    "burn": {"iterations": 2, "epochs": 1, "batch_size": 32, "alpha_start": 0.05, "alpha_end": 0.1,
             "beta_start": 0.1, "beta_end": 0.2},
    "fp": {"epochs": 1, "batch_size": 64},
    "nad": {"teacher_epochs": 1, "epochs": 1, "batch_size": 64},
    # a large mask learning rate, so that a few iterations on an untrained model move the masks
    "anp": {"iterations": 4, "batch_size": 32, "mask_lr": 5.0, "log_every": 2},
    "ibau": {"rounds": 2, "fixed_point_steps": 3, "batch_size": 64, "patch_share": 0.05},
    "ftsam": {"epochs": 1, "batch_size": 64},
    "sau": {"epochs": 2, "batch_size": 64, "pgd_steps": 3},
}


def random_data(n: int = 200) -> DefenderData:
    """``n`` random uint8 images, labels 0-9 in turn, as both training and clean data."""
    g = torch.Generator().manual_seed(0)
    ds = ImageDataset(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                      torch.arange(n) % 10, tuple(str(i) for i in range(10)), "random")
    return DefenderData(train=ds, clean=ds, clean_index=torch.arange(n))


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("preactresnet18", 10, width=4)


def calibrated_model() -> torch.nn.Module:
    """A width-4 model whose BatchNorm statistics are fitted to random images, so that its
    predictions vary and adversarial perturbations can change them."""
    model = tiny_model()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the one calibration batch
    images = torch.randint(0, 256, (160, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.train()(images.float() / 255)
    return model.eval()


def state(model: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}
