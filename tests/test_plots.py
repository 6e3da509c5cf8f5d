"""What the comparison figure draws (the PNG itself is checked by the CLI tests)."""
import matplotlib.pyplot as plt

from sab_mips import plots


def test_comparison_draws_only_the_runs_own_evaluations(tmp_path, monkeypatch):
    """An ``eval`` of the run at another length (a record with ``source``) is not a point of its curve."""
    drawn = {}

    def keep(fig, axes, path, title, dpi, legend_size=None):
        drawn["eval"] = [list(line.get_ydata()) for line in axes[1].get_lines()]
        plt.close(fig)
        return path

    monkeypatch.setattr(plots, "_finish", keep)
    records = [{"split": "train", "step": s, "loss": 1.0 / s, "recall": 1.0} for s in (1, 2)]
    records += [{"split": "eval", "step": 2, "T": 100, "accuracy": 0.9},
                {"split": "eval", "step": 2, "T": 10000, "accuracy": 0.4, "source": "eval"}]
    plots.plot_comparison({"run": records}, tmp_path / "c.png", "accuracy")
    assert drawn["eval"] == [[0.9]]
