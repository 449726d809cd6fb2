"""The evaluation plots' axes: sample counts ticked at whole powers of two, and k = 1 drawn as bars."""

import numpy as np
import pytest
from matplotlib.figure import Figure

from lrm_fast.evaluation.report import k_axis, pass_at_k_figure


@pytest.mark.parametrize(("k_max", "ticks"), [(1, [1]), (6, [1, 2, 4]), (16, [1, 2, 4, 8, 16])])
def test_k_axis_ticks_whole_powers_of_two_only(k_max, ticks):
    axes = Figure().subplots()
    axes.plot(np.arange(1, k_max + 1), np.linspace(0, 1, k_max))
    k_axis(axes, k_max)
    assert list(axes.get_xticks()) == ticks
    assert [label.get_text() for label in axes.get_xticklabels()] == [str(k) for k in ticks]
    assert len(axes.xaxis.get_minorticklocs()) == 0


def _entry(pass_k: list[float], maj_k: list[float]) -> dict:
    return {"summary": {"pass_at_k": pass_k, "maj_at_k": maj_k}}


def test_pass_at_k_with_one_sample_is_a_bar_per_benchmark():
    figure = pass_at_k_figure({"aime": _entry([0.25], [0.25]), "math": _entry([0.75], [0.75])})
    axes = figure.axes[0]
    assert [bar.get_height() for bar in axes.patches] == [0.25, 0.75]
    assert not axes.lines  # no lone points
    assert [label.get_text() for label in axes.get_xticklabels()] == ["aime", "math"]


def test_pass_at_k_curves_on_the_k_axis():
    figure = pass_at_k_figure({"aime": _entry([0.2, 0.3, 0.35, 0.4], [0.2, 0.22, 0.25, 0.26])})
    axes = figure.axes[0]
    assert [list(line.get_xdata()) for line in axes.lines] == [[1, 2, 3, 4], [1, 2, 3, 4]]
    assert list(axes.get_xticks()) == [1, 2, 4]
