"""What the comparison and transfer figures draw (the PNGs themselves are checked by the CLI tests)."""
import matplotlib.pyplot as plt
import pytest

from sab_mips import plots


@pytest.fixture
def drawn(monkeypatch):
    """Instead of saving a figure: (label, x, y) of every line of every panel, one list per panel."""
    panels = []

    def keep(fig, axes, path, title, dpi, legend_size=None):
        panels.extend([(line.get_label(), list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()]
                      for ax in axes)
        plt.close(fig)
        return path

    monkeypatch.setattr(plots, "_finish", keep)
    return panels


def test_comparison_draws_only_the_runs_own_evaluations(tmp_path, drawn):
    """An ``eval`` of the run at another length (a record with ``source``) is not a point of its curve."""
    records = [{"split": "train", "step": s, "loss": 1.0 / s, "recall": 1.0} for s in (1, 2)]
    records += [{"split": "eval", "step": 2, "T": 100, "accuracy": 0.9},
                {"split": "eval", "step": 2, "T": 10000, "accuracy": 0.4, "source": "eval"}]
    plots.plot_comparison({"run": records}, tmp_path / "c.png", "accuracy")
    assert [y for _, _, y in drawn[1]] == [[0.9]]


def test_transfer_draws_each_retrieval_against_T_through_the_mean_of_repeated_evaluations(tmp_path, drawn):
    records = [{"split": "eval", "step": 5, "T": 100, "accuracy": 1.0},  # the run's own evaluation: not drawn
               {"split": "eval", "step": 5, "T": 1000, "accuracy": 0.9, "ms_per_step": 1.0, "source": "e"},
               {"split": "eval", "step": 5, "T": 1000, "accuracy": 0.7, "ms_per_step": 3.0, "source": "e"},
               {"split": "eval", "step": 5, "T": 10, "accuracy": 0.5, "ms_per_step": 2.0, "source": "e"},
               {"split": "eval", "step": 5, "T": 1000, "accuracy": 0.4, "ms_per_step": 0.5, "recall": 0.8,
                "scored_recall": 0.6, "source": "e", "retrieval": "faiss:IVF4"},
               {"split": "eval", "step": 5, "T": 1000, "accuracy": 0.6, "source": "e", "batch_size": 8}]
    plots.plot_transfer(records, tmp_path / "t.png", "accuracy", own_retrieval="exact")
    accuracy, ms, recall = drawn
    assert accuracy[0] == ("exact", [10, 1000], [0.5, 0.8])  # the line through the mean at T=1000
    assert sorted(accuracy[1][2]) == [0.5, 0.7, 0.9]  # every evaluation as a point
    assert accuracy[2][0] == "faiss:IVF4" and accuracy[2][2] == [0.4]
    assert accuracy[4][0] == "exact, B=8" and accuracy[4][2] == [0.6]  # another batch size: its own line
    assert ms[0][2] == [2.0, 2.0]
    assert len(recall) == 4 and recall[0][0] == "faiss:IVF4" and recall[0][2] == [0.8]  # only IVF has recall
    assert recall[2][0].startswith("_") and recall[2][2] == [0.6]  # the scored steps' recall: dashed, unlabelled
