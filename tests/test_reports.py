"""Result schema, merging, leaderboards, plots and `starft report`, on hand-made records."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from starft_cli.cli.app import app
from starft_cli.errors import ConfigError, DataError, UsageError
from starft_cli.reports import load_results, merge_records, write_report
from starft_cli.reports.tables import leaderboard, render

runner = CliRunner()


def rec(model: str, dataset: str, metric: str, value: float, **extra) -> dict:
    return {"model": model, "dataset": dataset, "split": "test", "metric": metric, "value": value, **extra}


DOMAIN = [
    rec("zs", "imagenet", "top1", 0.70),
    rec("zs", "imagenet-v2", "top1", 0.60),
    rec("zs", "imagenet-r", "top1", 0.80),
    rec("zs", "imagenet-a", "top1", 0.40),
    rec("zs", "imagenet-sketch", "top1", 0.50),
    rec("ft", "imagenet", "top1", 0.80),
    rec("ft", "imagenet-v2", "top1", 0.70),
    rec("ft", "imagenet-r", "top1", 0.70),
    rec("ft", "imagenet-a", "top1", 0.30),
    rec("ft", "imagenet-sketch", "top1", 0.50),
]
GROUPS = [
    rec("zs", "waterbirds", "top1", 0.90, num_skipped=2),
    rec("zs", "waterbirds", "worst_group_acc", 0.40, num_skipped=2),
    rec("zs", "waterbirds", "group_acc[landbird on land]", 0.95),
    rec("zs", "waterbirds", "group_acc[waterbird on land]", 0.40),
    rec("ft", "waterbirds", "top1", 0.93),
    rec("ft", "waterbirds", "worst_group_acc", 0.55),
    rec("ft", "waterbirds", "group_acc[landbird on land]", 0.97),
    rec("ft", "waterbirds", "group_acc[waterbird on land]", 0.55),
]


def write(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records))
    return path


def test_merge_replaces_only_identical_keys():
    old = [rec("a", "pacs", "top1", 0.1), rec("a", "pacs", "ece", 0.2), rec("b", "pacs", "top1", 0.3)]
    new = [rec("a", "pacs", "top1", 0.9), rec("a", "waterbirds", "top1", 0.5)]
    merged = merge_records(old, new)
    assert [(r["model"], r["dataset"], r["metric"], r["value"]) for r in merged] == [
        ("a", "pacs", "top1", 0.9),
        ("a", "pacs", "ece", 0.2),
        ("b", "pacs", "top1", 0.3),
        ("a", "waterbirds", "top1", 0.5),
    ]


def test_avg_ood_and_deltas_by_hand(tmp_path: Path):
    frame = load_results([write(tmp_path / "r.json", DOMAIN)])
    result = leaderboard(frame)
    board = result.table
    assert result.baseline == "zs"
    # zs: (0.6 + 0.8 + 0.4 + 0.5) / 4 = 0.575; ft: (0.7 + 0.7 + 0.3 + 0.5) / 4 = 0.55
    assert board.loc["zs", "avg OOD top1"] == pytest.approx(0.575)
    assert board.loc["ft", "avg OOD top1"] == pytest.approx(0.55)
    deltas = result.deltas
    assert deltas.loc["ft", "imagenet top1"] == pytest.approx(0.10)
    assert deltas.loc["ft", "avg OOD top1"] == pytest.approx(-0.025)
    other = leaderboard(frame, baseline="ft")
    assert other.baseline == "ft" and other.deltas.loc["zs", "imagenet top1"] == pytest.approx(-0.10)
    assert not board.attrs  # explicit values, nothing riding along in DataFrame.attrs
    with pytest.raises(UsageError, match="baseline 'nope'"):
        leaderboard(frame, baseline="nope")


def test_avg_ood_absent_without_all_four_shifts(tmp_path: Path):
    frame = load_results([write(tmp_path / "r.json", [r for r in DOMAIN if r["dataset"] != "imagenet-a"])])
    assert "avg OOD top1" not in leaderboard(frame).table.columns


def test_renderers(tmp_path: Path):
    frame = load_results([write(tmp_path / "r.json", DOMAIN + GROUPS)])
    table = render(frame, "table")
    assert "ft" in table and "80.00 (+10.00)" in table and "(-2.50)" in table
    zs_row = next(line for line in table.splitlines() if line.startswith("zs "))
    assert zs_row.split()[1:3] == ["70.00", "60.00"]  # two decimals even without a delta
    assert "group_acc[" not in table  # per-group values stay in results.json and the plot
    assert "zs on waterbirds: 2 unreadable image(s) skipped" in table
    md = render(frame, "md")
    assert md.startswith("| model") and "| ft " in md
    csv_text = render(frame, "csv")
    header, first, second = csv_text.splitlines()[:3]
    assert header.split(",")[:2] == ["model", "imagenet top1"]
    assert "imagenet top1 delta" in header
    assert first.startswith("zs,0.700000") and second.startswith("ft,0.800000")
    records = json.loads(render(frame, "json"))
    assert len(records) == len(DOMAIN + GROUPS)


def test_strict_json_and_required_fields(tmp_path: Path):
    (tmp_path / "nan.json").write_text('[{"model": "a", "dataset": "d", "metric": "top1", "value": NaN}]')
    with pytest.raises(DataError, match="strict JSON"):
        load_results([tmp_path / "nan.json"])
    write(tmp_path / "nokey.json", [{"model": "a", "metric": "top1", "value": 0.5}])
    with pytest.raises(DataError, match="lacks dataset"):
        load_results([tmp_path / "nokey.json"])


def test_write_report_merges_with_existing_results(tmp_path: Path):
    import pandas as pd

    first = write_report(tmp_path, pd.DataFrame(GROUPS[:4]))
    assert (first.added, first.replaced) == (4, 0)
    changed = [dict(GROUPS[0], value=0.5), *GROUPS[4:]]
    second = write_report(tmp_path, pd.DataFrame(changed))
    assert (second.added, second.replaced) == (4, 1)
    assert second.paths == [tmp_path / "results.json", tmp_path / "leaderboard.md", tmp_path / "leaderboard.csv"]
    assert len(second.frame) == 8  # the merged records
    stored = json.loads((tmp_path / "results.json").read_text())
    assert len(stored) == 8
    assert next(r for r in stored if r["model"] == "zs" and r["metric"] == "top1")["value"] == 0.5
    assert "num_skipped" not in next(r for r in stored if r["metric"] == "group_acc[landbird on land]")  # no NaN fill
    assert (tmp_path / "leaderboard.md").read_text().count("\n| ") == 2  # the two model rows


def test_plot_writes_a_png(tmp_path: Path):
    from starft_cli.reports.plots import plot  # matplotlib is in the test extra

    frame = load_results([write(tmp_path / "r.json", DOMAIN + GROUPS)])
    path = plot(frame, tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    only_groups = load_results([write(tmp_path / "g.json", GROUPS)])
    assert plot(only_groups, tmp_path / "g.png").stat().st_size > 1000
    with pytest.raises(UsageError, match="PNG"):
        plot(frame, tmp_path / "p.jpg")


def test_cli_report_merges_runs_with_baseline_and_plot(tmp_path: Path):
    a = write(tmp_path / "run1" / "eval" / "results.json", DOMAIN)
    b = write(tmp_path / "two.json", GROUPS)
    result = runner.invoke(app, ["report", str(tmp_path / "run1"), str(b), "--baseline", "ft", "--format", "md"])
    assert result.exit_code == 0, result.output
    assert (
        "| zs " in result.stdout and "70.00 (-10.00)" in result.stdout and "waterbirds worst_group_acc" in result.stdout
    )
    out, png = tmp_path / "board.csv", tmp_path / "board.png"
    args = ["report", str(a), str(b), "--format", "csv", "--out", str(out), "--plot", str(png)]
    assert runner.invoke(app, args).exit_code == 0
    assert out.read_text().startswith("model,") and png.stat().st_size > 0
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "exists" in again.stderr and "--force" in again.stderr
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0


def test_cli_report_errors(tmp_path: Path):
    result = runner.invoke(app, ["report", str(tmp_path / "none.json")])
    assert result.exit_code == 1 and "no such results file" in result.stderr
    write(tmp_path / "r.json", DOMAIN)
    bad = runner.invoke(app, ["report", str(tmp_path / "r.json"), "--baseline", "x"])
    assert bad.exit_code == 2 and "baseline 'x'" in bad.stderr


def test_a_dataset_on_two_splits_gets_a_column_per_split(tmp_path: Path):
    records = [rec("zs", "waterbirds", "top1", 0.9), {**rec("zs", "waterbirds", "top1", 0.8), "split": "val"}]
    board = leaderboard(load_results([write(tmp_path / "r.json", records)])).table
    assert list(board.columns) == ["waterbirds[test] top1", "waterbirds[val] top1"]
    assert board.loc["zs"].tolist() == [0.9, 0.8]


def test_plot_without_matplotlib_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the optional extra were not installed
    b = write(tmp_path / "two.json", GROUPS)
    result = runner.invoke(app, ["report", str(b), "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 2
    assert "--plot needs matplotlib" in result.stderr and "starft[plot]" in result.stderr
    assert not (tmp_path / "p.png").exists()


def test_table_and_markdown_show_ece_and_mean_group_acc(tmp_path: Path):
    """Every headline metric is in every leaderboard format (before, table and md dropped ece and mean_group_acc)."""
    records = [
        rec("zs", "waterbirds", "top1", 0.90),
        rec("zs", "waterbirds", "mean_group_acc", 0.70),
        rec("zs", "waterbirds", "worst_group_acc", 0.40),
        rec("zs", "waterbirds", "ece", 0.123),
        rec("zs", "waterbirds", "group_acc[landbird on land]", 0.95),
    ]
    frame = load_results([write(tmp_path / "r.json", records)])
    for fmt in ("table", "md", "csv"):
        text = render(frame, fmt)
        assert "waterbirds mean_group_acc" in text and "waterbirds ece" in text, fmt
        assert "group_acc[" not in text
    table = render(frame, "table")
    row = next(line for line in table.splitlines() if line.startswith("zs "))
    assert row.split()[1:] == ["90.00", "40.00", "70.00", "12.30"]  # top1, worst, mean, ece
    assert "ece = expected calibration error" in table and "lower is better" in table
    md = render(frame, "md")
    assert "| 70.00 " in md and "| 12.30 " in md


def _equal_group_records() -> list[dict]:
    out = []
    for model in ("zs", "ft", "star"):
        for ds in ("waterbirds", "pacs"):
            out += [rec(model, ds, "top1", 0.5), rec(model, ds, "worst_group_acc", 0.5)]
        out.append(rec(model, "waterbirds", "group_acc[landbird on land]", 0.5))
    return out


def test_group_shift_figure_has_honest_title_axes_diagonal_and_limits(tmp_path: Path):
    import matplotlib.pyplot as plt

    from starft_cli.reports.plots import axis_limits, figure

    fig = figure(load_results([write(tmp_path / "r.json", _equal_group_records())]))
    left = fig.axes[0]
    assert left.get_title() == "average vs worst-group accuracy"  # was "ID vs OOD"
    assert left.get_xlabel().startswith("average accuracy") and left.get_ylabel().startswith("worst-group accuracy")
    (diagonal,) = [line for line in left.get_lines() if line.get_label() == "y = x"]
    assert list(diagonal.get_xdata()) == list(diagonal.get_ydata())
    assert left.get_xlim() == left.get_ylim() == (45.0, 55.0)  # all values 50%: padded, not -0.04..0.04
    assert axis_limits([50.0]) == (45.0, 55.0) and axis_limits([100.0, 99.0]) == (90.0, 100.4)
    assert axis_limits([0.0]) == (-0.4, 10.0) and axis_limits([]) == (0.0, 100.0)  # past 0: a point there whole
    assert axis_limits([20.0, 80.0]) == (14.0, 86.0)
    # three models on the same spot: distinct markers, hollow, decreasing sizes, so all three stay visible
    marks = [c for c in left.collections if c.get_label() in ("zs", "ft", "star")]
    assert [c.get_label() for c in marks] == ["zs", "ft", "star"]
    sizes = [float(c.get_sizes()[0]) for c in marks]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 3
    assert len({c.get_paths()[0].vertices.tobytes() for c in marks}) == 3  # different marker shapes
    # coinciding datasets get one label, not overprinted ones
    assert [t.get_text() for t in left.texts] == ["waterbirds, pacs"]
    plt.close(fig)


def test_domain_shift_figure_is_id_vs_ood_with_diagonal(tmp_path: Path):
    import matplotlib.pyplot as plt

    from starft_cli.reports.plots import figure

    fig = figure(load_results([write(tmp_path / "r.json", DOMAIN)]))
    left = fig.axes[0]
    assert left.get_title() == "ID vs OOD accuracy"
    assert "ImageNet top-1" in left.get_xlabel() and "avg OOD" in left.get_ylabel()
    assert any(line.get_label() == "y = x" for line in left.get_lines())
    lo, hi = left.get_xlim()
    assert lo <= 57.5 and hi >= 80.0 and lo >= 0 and hi <= 100  # zs (70, 57.5) and ft (80, 55) inside
    plt.close(fig)


def test_leaderboards_read_the_metric_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Columns follow the registry's order, its headline flag decides what is shown and its higher-is-better flag
    what the footnote says; each shown metric is explained by its registry doc."""
    import dataclasses

    from starft_cli.eval import metrics as M

    records = [
        rec("zs", "waterbirds", "ece", 0.1),
        rec("zs", "waterbirds", "mean_group_acc", 0.7),
        rec("zs", "waterbirds", "top1", 0.9),
        rec("zs", "waterbirds", "group_acc[landbird on land]", 0.95),
    ]
    frame = load_results([write(tmp_path / "r.json", records)])
    assert list(leaderboard(frame).table.columns) == ["waterbirds top1", "waterbirds mean_group_acc", "waterbirds ece"]
    table = render(frame, "table")
    assert f"top1 = {M.METRICS['top1'].doc}" in table and f"mean_group_acc = {M.METRICS['mean_group_acc'].doc}" in table
    assert f"ece = {M.METRICS['ece'].doc} (lower is better)" in table
    assert "worst_group_acc =" not in table  # not shown, not explained

    flipped = dict(M.METRICS)
    flipped["ece"] = dataclasses.replace(M.METRICS["ece"], headline=False)
    flipped["mean_group_acc"] = dataclasses.replace(M.METRICS["mean_group_acc"], higher_is_better=False)
    monkeypatch.setattr(M, "METRICS", flipped)
    assert list(leaderboard(frame).table.columns) == ["waterbirds top1", "waterbirds mean_group_acc"]
    table = render(frame, "table")
    assert "waterbirds ece" not in table and "ece =" not in table
    assert f"mean_group_acc = {M.METRICS['mean_group_acc'].doc} (lower is better)" in table


def test_avg_ood_averages_the_ood_entries_of_the_suite_roles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """avg OOD is the mean top-1 over the datasets whose suite entry has role "ood": with imagenet-a's role taken
    away it averages the other three."""
    from starft_cli.eval import suites

    frame = load_results([write(tmp_path / "r.json", DOMAIN)])
    entries = tuple(
        suites.SuiteEntry(e.dataset, e.metrics, e.split, role="" if e.dataset == "imagenet-a" else e.role)
        for e in suites.BUILTIN_SUITES["domain-shift"].entries
    )
    monkeypatch.setitem(suites.BUILTIN_SUITES, "domain-shift", suites.Suite("domain-shift", entries))
    board = leaderboard(frame).table
    assert board.loc["zs", "avg OOD top1"] == pytest.approx((0.6 + 0.8 + 0.5) / 3)
    assert suites.shifts() == [
        suites.Shift("domain-shift", "imagenet", ("imagenet-v2", "imagenet-r", "imagenet-sketch"))
    ]
    with pytest.raises(ConfigError, match="unknown role 'shifted'"):
        suites.SuiteEntry("imagenet-a", ("top1",), role="shifted")


def test_write_report_returns_a_typed_result(tmp_path: Path):
    import pandas as pd

    from starft_cli.reports import WrittenReport

    written = write_report(tmp_path, pd.DataFrame(DOMAIN))
    assert isinstance(written, WrittenReport)
    assert (written.added, written.replaced, len(written.frame)) == (len(DOMAIN), 0, len(DOMAIN))
    assert all(p.is_file() for p in written.paths)


def test_conflicting_records_of_different_weights_are_refused_naming_both_files(tmp_path: Path):
    """Issue 19.7: two files hold top1 of one (model, dataset, split) with different values and weights: two models
    under one name. `report` refuses, naming both files (it used to show whichever came last)."""
    a = write(tmp_path / "a" / "results.json", [rec("run", "pacs", "top1", 0.611, weights_fingerprint="aaaa1111")])
    b = write(tmp_path / "b" / "results.json", [rec("run", "pacs", "top1", 0.472, weights_fingerprint="bbbb2222")])
    result = runner.invoke(app, ["report", str(tmp_path / "a"), str(b)])
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: {a} and {b} hold different weights under one name: top1 of model run on pacs (test) is 0.611 vs "
        "0.472 (weights aaaa1111 vs bbbb2222). Report one of them, or rename the model in one file so that both "
        "rows are shown\n"
    )
    # the same weights measured again (e.g. after the data changed): a warning naming both files, the later shown
    c = write(tmp_path / "c.json", [rec("run", "pacs", "top1", 0.5, weights_fingerprint="aaaa1111")])
    again = runner.invoke(app, ["report", str(a), str(c), "--format", "csv"])
    assert again.exit_code == 0, again.output
    assert again.stderr == (
        f"warning: {a} and {c} both hold top1 of model run on pacs (test): 0.611 vs 0.5; the later one ({c}) is shown\n"
    )
    assert again.stdout.splitlines()[1].startswith("run,0.500000,")
    same = runner.invoke(app, ["report", str(a), str(a)])  # equal values: nothing to say
    assert same.exit_code == 0 and same.stderr == ""


@pytest.mark.parametrize(
    ("metric", "value"), [("top1", 1.5), ("ece", -0.1), ("group_acc[landbird on land]", 95.0), ("worst_group_acc", 2)]
)
def test_a_fraction_outside_0_1_is_refused_naming_the_file(metric: str, value: float, tmp_path: Path):
    """Issue 20.14: a hand-edited 1.5 was shown as 150.00; every registered metric (and its per-group records) is
    a fraction, so a value outside [0, 1] is refused naming the file. Drift (nats) and foreign metrics are not."""
    path = write(tmp_path / "r.json", [rec("zs", "waterbirds", "top1", 0.9), rec("zs", "waterbirds", metric, value)])
    result = runner.invoke(app, ["report", str(path)])
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: {path}: {metric} of model zs on waterbirds (test) is {value!r}, outside [0, 1]. Metrics are stored "
        "as fractions (0.615 for 61.5%); correct the record or re-run `starft eval`\n"
    )
    other = write(tmp_path / "o.json", [rec("zs", "waterbirds", "spurious_drift[background]", 1.5)])
    assert runner.invoke(app, ["report", str(other)]).exit_code == 0


def _crowded_group_records() -> list[dict]:
    """Four models; pacs and cifar10.02 on one spot at 0% worst-group, waterbirds and iwild spread a little per
    model, waterbirds at 0%; a group at 0% and bars near 100%."""
    out = []
    for k, model in enumerate(("zero-shot", "ft", "starft-seed0", "flyp-long-name-model")):
        for ds, top1, worst in (("waterbirds", 0.9 - 0.01 * k, 0.0), ("pacs", 0.5, 0.0), ("cifar10.02", 0.5, 0.0),
                                ("iwild", 0.7 + 0.02 * k, 0.3)):  # fmt: skip
            out += [rec(model, ds, "top1", top1), rec(model, ds, "worst_group_acc", worst)]
        for group, value in (("landbird on land", 0.98), ("waterbird on land", 0.0), ("waterbird on water", 0.97)):
            out.append(rec(model, "waterbirds", f"group_acc[{group}]", value))
    return out


def test_figure_labels_are_one_per_dataset_apart_inside_and_points_at_zero_whole(tmp_path: Path):
    """Issue 20.13: labels of coinciding points overprinted one another and the tick labels, points at 0% were cut
    in half by the axis, legend markers (of the points' sizes) overlapped, the bar legend covered bars."""
    import matplotlib.pyplot as plt

    from starft_cli.reports.plots import figure

    fig = figure(load_results([write(tmp_path / "r.json", _crowded_group_records())]))
    fig.canvas.draw()
    left, right = fig.axes
    assert sorted(t.get_text() for t in left.texts) == ["iwild", "pacs, cifar10.02", "waterbirds"]  # one each
    from matplotlib.text import Text

    boxes = [Text.get_window_extent(t) for t in left.texts]  # the words, without their leader lines
    axes_box = left.get_window_extent()
    for i, box in enumerate(boxes):
        assert not any(box.overlaps(other) for other in boxes[i + 1 :])
        assert axes_box.y0 < box.y0 and box.y1 <= axes_box.y1  # inside, above the x axis and its tick labels
    lo, _ = left.get_ylim()
    assert lo < 0  # the points at 0% are drawn whole
    assert min(left.get_yticks()) == 0  # and no tick below 0%
    legend = left.get_legend()
    sizes = {float(h.get_sizes()[0]) for h in legend.legend_handles if hasattr(h, "get_sizes")}
    assert sizes == {40.0}  # one marker size in the legend
    assert right.get_legend().get_window_extent().y0 >= right.get_window_extent().y1  # above the bars
    plt.close(fig)


def test_demo_figure_labels_coinciding_models_once_and_draws_points_at_zero_whole(tmp_path: Path):
    import matplotlib.pyplot as plt
    import pandas as pd
    from matplotlib.text import Text

    from starft_cli.reports.plots import demo_plot

    models = ["zero-shot", "ft", "lp", "flyp", "starft", "soup"]
    spots = {"zero-shot": (0.9, 0.0), "ft": (0.95, 0.0), "lp": (0.95, 0.0), "flyp": (0.9, 0.0), "starft": (0.95, 0.2)}
    records = []
    for model in models:
        top1, worst = spots.get(model, (0.95, 0.2))
        records += [{**rec(model, "d", "top1", top1), "split": "val"}, rec(model, "d", "worst_group_acc", worst)]
        records += [rec(model, "d", f"group_acc[{g}]", worst) for g in ("zero on red", "one on blue")]
    fig = demo_plot(pd.DataFrame(records), models)
    fig.canvas.draw()
    left = fig.axes[0]
    assert sorted(t.get_text() for t in left.texts) == ["ft, lp", "starft, soup", "zero-shot, flyp"]
    boxes = [Text.get_window_extent(t) for t in left.texts]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    assert left.get_ylim()[0] < 0 and min(left.get_yticks()) == 0
    assert {float(h.get_sizes()[0]) for h in left.get_legend().legend_handles} == {40.0}
    plt.close(fig)
