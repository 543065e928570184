"""Fig. 5 at page width: the grid of panels, and histograms whose bins show the distribution only."""

import io
import struct

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd

from burn.plotting import fig5_figure, grid_step, log_bin_edges, log_density

ATTACKS = ["badnets", "blended", "lf", "trojannn", "inputaware", "lc", "ssba"]


def _frames(attacks, n=200, seed=0):
    rng = np.random.default_rng(seed)
    dist = pd.concat([pd.DataFrame({"attack": a, "group": g, "distance": rng.lognormal(mu, 0.6, n)})
                      for a in attacks for g, mu in (("clean", -2.0), ("poisoned", -1.0))], ignore_index=True)
    roc = pd.DataFrame([{"attack": a, "fpr": f, "tpr": t} for a in attacks for f, t in ((0, 0), (0.3, 0.8), (1, 1))])
    return dist, roc, pd.DataFrame({"attack": attacks, "auroc": 0.8})


def _png_size(fig) -> tuple[int, int]:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150, bbox_inches="tight")  # as provenance.save_figure
    return struct.unpack(">II", buf.getvalue()[16:24])  # the IHDR chunk: width, height


def test_fig5_is_a_grid_at_most_2400_px_wide():
    fig = fig5_figure(*_frames(ATTACKS), "tiny")
    assert len(fig.axes) == len(ATTACKS) + 1  # a histogram per attack and the ROC panel
    rows = {round(ax.get_position().y0, 3) for ax in fig.axes}
    assert len(rows) == 2
    width, height = _png_size(fig)
    assert 1200 < width <= 2400 and height < width


def test_fig5_one_attack_is_two_panels():
    fig = fig5_figure(*_frames(ATTACKS[:1]), "tiny")
    assert len(fig.axes) == 2
    assert _png_size(fig)[0] <= 2400


def test_grid_step_finds_a_grid_and_no_grid_in_float32():
    rng = np.random.default_rng(0)
    x = rng.lognormal(-2, 1, 2000)
    assert grid_step(x.astype(np.float32).astype(float)) is None
    assert np.isclose(grid_step(np.round(x, 4)), 1e-4)


def test_bins_do_not_alias_with_a_1e4_grid():
    """Every value of a 1e-4 grid present once: every bin must hold some of them; plain log
    bins near 1e-4 are narrower than a step and leave empty bins between spikes."""
    v = np.arange(1, 3001) * 1e-4
    plain = np.power(10.0, np.linspace(np.log10(v[0]) - 0.01, np.log10(v[-1]) + 0.01, 49))
    assert (np.histogram(v, plain)[0] == 0).any()  # the data does exercise the aliasing
    edges = log_bin_edges(v, 48)
    counts, _ = np.histogram(v, edges)
    assert counts.sum() == len(v) and (counts > 0).all()
    assert len(edges) > 20  # merged only where a bin would be finer than the grid
    # each bin holds a whole number of grid values, so the density of a uniform grid rises
    # smoothly with the distance (per decade: proportional to the value); the last bin
    # reaches past the data
    assert (np.diff(log_density(v, edges)[:-1]) > 0).all()


def test_a_few_tiny_distances_do_not_make_a_spike():
    """Density per decade: three samples at 1e-4 stay small next to 5,000 in the bulk."""
    rng = np.random.default_rng(0)
    v = np.concatenate([[1.05e-4, 1.1e-4, 1.3e-4], rng.lognormal(-2, 0.8, 5000)])
    edges = log_bin_edges(v, 48)
    density = log_density(v, edges)
    assert edges[density.argmax()] > 1e-2
    assert density[:5].max() < 0.05 * density.max()
    assert np.isclose((density * np.log10(edges[1:] / edges[:-1])).sum(), 1.0, atol=1e-4)
