"""benchmark/report/: its statistics against rliable / scipy / hand computations, and the whole report
on an experiment directory made of two real (tiny) runs, A2C and GALA, with a manifest as the runner writes it."""

import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from rliable import library, metrics

from benchmark import report
from benchmark.common import scalars
from benchmark.report import cli, figures, load, markdown, stats, tables


# --- statistics ----------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::FutureWarning")  # arch deprecates the random_state rliable passes
def test_iqm_and_ci_are_rliables():
    rng = np.random.default_rng(0)
    scores = {"a": rng.normal(size=8), "b": rng.normal(3, 2, size=8)}
    got = stats.iqm_with_ci(scores, reps=500, seed=3)
    matrices = {k: v.reshape(-1, 1) for k, v in scores.items()}
    np.random.seed(3)  # rliable 1.2 resamples with np.random.choice, whatever random_state says
    _, intervals = library.get_interval_estimates(
        matrices, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=500, random_state=np.random.RandomState(3)
    )
    for k, x in scores.items():
        assert got[k][0] == pytest.approx(scipy.stats.trim_mean(x, 0.25))  # 8 runs: cut 2 on each side exactly
        assert got[k][0] == pytest.approx(np.sort(x)[2:6].mean())
        assert got[k][1:] == pytest.approx(tuple(intervals[k][:, 0]))
        assert got[k][1] <= got[k][0] <= got[k][2]
    assert stats.iqm_with_ci(scores, reps=500, seed=3) == got  # a fixed seed gives the same intervals


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_iqm_over_games_is_the_trimmed_mean_of_all_runs_and_games():
    """Runs x games: rliable's aggregate IQM is the 25% trimmed mean of all entries; the bootstrap
    resamples runs within each game (stratified)."""
    rng = np.random.default_rng(2)
    scores = {"a": rng.normal(size=(8, 3))}
    (iqm, low, high) = stats.iqm_with_ci(scores, reps=300, seed=4)["a"]
    assert iqm == pytest.approx(scipy.stats.trim_mean(scores["a"].ravel(), 0.25))
    np.random.seed(4)
    _, intervals = library.get_interval_estimates(
        scores, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=300, random_state=np.random.RandomState(4)
    )
    assert (low, high) == pytest.approx(tuple(intervals["a"][:, 0]))


def test_paired_ttest_is_scipys_and_the_formula():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=6), rng.normal(0.5, size=6)
    got = stats.paired_ttest(a, b)
    d = a - b
    assert got.n == 6
    assert got.t == pytest.approx(d.mean() / (d.std(ddof=1) / math.sqrt(6)))
    assert got.t == pytest.approx(scipy.stats.ttest_rel(a, b).statistic)
    assert got.p == pytest.approx(scipy.stats.ttest_rel(a, b).pvalue)
    assert stats.paired_ttest([1.0], [2.0]) is None


def test_final_score():
    # episodes at or after 90% of the 1000 steps: 3, 4, 5
    assert stats.final_score([100, 500, 900, 980, 990], [1, 2, 3, 4, 5], 1000) == 4
    # none in the last 10%: the episodes of the last logged step
    assert stats.final_score([100, 200, 200], [1, 2, 4], 1000) == 3
    assert math.isnan(stats.final_score([], [], 1000))


def test_success_share_above_random_play():
    # Pong: random -20.7, nominal 18, half way = -1.35
    assert stats.success_threshold(18, -20.7, 0.5) == pytest.approx(-1.35)
    assert stats.success_share([-5, -1.3, 10, -21], 18, -20.7, 0.5) == 0.5
    assert stats.success_share([0.9, 1.0], 2, 0, 0.5) == 0.5  # random 0: half the nominal score


def test_run_sps_skips_the_first_point():
    assert stats.run_sps([100, 300, 310, 320]) == 310
    assert stats.run_sps([250]) == 250
    assert math.isnan(stats.run_sps([]))


@pytest.fixture(autouse=True)
def tabulated_random_play(tmp_path_factory, monkeypatch):
    """The report's tests count from the tabulated random play (Pong -20.7, Breakout 1.7, ...) whatever
    results/random_play.json the project has committed: a test that wants measured random play gives its file."""
    from benchmark.report import games

    monkeypatch.setattr(games, "RANDOM_PLAY_FILE", tmp_path_factory.mktemp("no_random_play") / "absent.json")


def gala_record(**fields) -> load.RunRecord:
    """A hand-built ok GALA run on Pong at 4 simulators, seed 1, 1,000 steps; FIELDS override."""
    return load.RunRecord(**{"name": "r", "algorithm": "gala_a2c", "env_id": "Pong-v5", "seed": 1, "simulators": 4,
                               "total_timesteps": 1000, "status": "ok", **fields})


def manifest_entry(**fields) -> dict:
    """A manifest row of a GALA run on Pong at 4 simulators, seed 1, that ran ok; FIELDS override."""
    return {"experiment": "old", "preset": "smoke", "algorithm": "gala_a2c", "label": "gala_a2c",
            "script": "gala_a2c_atari.py", "env_id": "Pong-v5", "seed": 1, "simulators": 4, "ranks": 2,
            "envs_per_rank": 2, "workers": 2, "total_timesteps": 6000, "command": ["mpirun"],
            "workdir": "gala_a2c/Pong-v5/sims4/seed1", "git_commit": "unknown", "wandb_project": "p",
            "wandb_group": "old", "run_dir": None, "status": "ok", "returncode": 0, "wall_seconds": 1.0,
            "utilisation": None, **fields}


# --- the report on real runs ---------------------------------------------------------------------------
@pytest.fixture
def experiment(tiny_experiment):
    """The runner's tiny experiment (tests/conftest.py): A2C and GALA on Pong, and two failed runs."""
    experiment, proc = tiny_experiment
    assert proc.returncode == 1, proc.stderr  # the runs of the unknown game failed, the others ran
    return experiment


def row(markdown: str, section: str, *cells: str) -> list[str]:
    """The cells of the table row of `section` that starts with `cells`."""
    part = markdown.split(f"## {section}")[1].split("\n## ")[0]
    for line in part.splitlines():
        values = [v.strip() for v in line.strip("|").split("|")]
        if values[: len(cells)] == list(cells):
            return values
    raise AssertionError(f"no row {cells} in {section}:\n{part}")


def test_report_on_two_real_runs(experiment, tmp_path):
    out = tmp_path / "report"
    given = ["--nominal", "Pong=-15"]  # above random play (-20.7), so success is defined whatever the runs scored
    assert report.main(["--experiment", str(experiment), "--out", str(out), "--bootstrap-reps", "200", *given]) == 0
    for name in cli.FIGURES:
        assert (out / name).stat().st_size > 0, name
    md = (out / "report.md").read_text()

    manifest = {(e["algorithm"], e["env_id"]): e for e in json.loads((experiment / "manifest.json").read_text())}
    for algorithm in ("a2c_allreduce", "gala_a2c"):
        assert row(md, "Runs", algorithm, "Pong", "2")[3:5] == ["1", "0"]
        assert row(md, "Runs", algorithm, "Pongg", "2")[3:5] == ["0", "1"]
        assert f"tiny/{algorithm}/Pongg-v5/sims2/seed1: exit 2" in md
        run_dir = experiment / manifest[algorithm, "Pong-v5"]["run_dir"]
        tags = scalars(run_dir)
        late = [v for s, v in tags["charts/episodic_return"] if s >= 2700]
        if not late:  # no game ended in the last 10%: the games of the last step that logged one
            last = max(s for s, _ in tags["charts/episodic_return"])  # GALA's agents' games arrive out of order
            late = [v for s, v in tags["charts/episodic_return"] if s == last]
        assert row(md, "Final scores", "Pong", algorithm, "2")[3:5] == ["1", f"{np.mean(late):.2f}"]
        # success threshold: -20.7 + 0.5 x (-15 + 20.7) = -17.85
        assert row(md, "Success", "Pong", algorithm, "2")[3] == f"{float(np.mean(late) >= -17.85):.2f} (1)"
        evaluation = json.loads((run_dir / "eval.json").read_text())
        argmax, sampled = row(md, "Evaluation", "Pong", algorithm, "2")[4:6]
        assert argmax == f"{evaluation['argmax']['mean']:.2f} ± n/a"
        assert sampled == f"{evaluation['sampled']['mean']:.2f} ± n/a"
        sps = [v for _, v in tags["charts/SPS"]]
        assert row(md, "Throughput", algorithm, "2")[3] == f"{np.median(sps[1:]):.0f}"
        cpu = manifest[algorithm, "Pong-v5"]["utilisation"]["cpu_percent"]
        assert row(md, "Throughput", algorithm, "2")[5] == f"{np.mean(cpu):.1f}"
    sps = {a: np.median([v for _, v in scalars(experiment / manifest[a, "Pong-v5"]["run_dir"])["charts/SPS"]][1:])
           for a in ("a2c_allreduce", "gala_a2c")}
    assert row(md, "Throughput", "gala_a2c", "2")[4] == f"{sps['gala_a2c'] / sps['a2c_allreduce']:.2f}"
    assert "final score, paired over (game, simulators, seed): n/a (need >= 2 pairs)" in md
    gossip = row(md, "Gossip", "algorithm")  # the header: no push-sum column, as no run had push-sum's weights
    assert "push-sum weights" not in gossip and len(row(md, "Gossip", "gala_a2c", "Pong", "2", "1")) == len(gossip)
    # the last quarter's mean disagreement and gradient cosine, from GALA's own events
    gala = dict(zip(gossip, row(md, "Gossip", "gala_a2c", "Pong", "2", "1")))
    events = scalars(experiment / manifest["gala_a2c", "Pong-v5"]["run_dir"])
    for column, tag, digits in (("disagreement (last quarter)", "gossip/disagreement_relative", 4),
                                ("gradient cosine (last quarter)", "gossip/grad_cosine", 3)):
        late = [v for s, v in events[tag] if s >= 0.75 * 3000]
        assert late and gala[column] == f"{np.mean(late):.{digits}f}", (column, events[tag])


def experiment_of(entries: list[dict], workdirs: list[str], experiment: Path, where: Path) -> Path:
    """An experiment directory WHERE with the manifest ENTRIES, whose workdirs are links to WORKDIRS of EXPERIMENT
    (one each, in order)."""
    where.mkdir()
    (where / "manifest.json").write_text(json.dumps(entries))
    for e, workdir in zip(entries, workdirs):
        (where / e["workdir"]).parent.mkdir(parents=True, exist_ok=True)
        (where / e["workdir"]).symlink_to(experiment / workdir)
    return where


def a2c_and_gala_as_a_variant(experiment: Path, where: Path) -> Path:
    """An experiment WHERE holding EXPERIMENT's real A2C run on Pong and its real GALA run as the variant gala_sync."""
    entries = [e for e in json.loads((experiment / "manifest.json").read_text()) if e["env_id"] == "Pong-v5"]
    (gala,) = [e for e in entries if e["algorithm"] == "gala_a2c"]
    (a2c,) = [e for e in entries if e["algorithm"] == "a2c_allreduce"]
    workdir = "gala_sync/Pong-v5/sims2/seed1"
    variant = {**gala, "label": "gala_sync", "workdir": workdir,
               "run_dir": gala["run_dir"].replace(gala["workdir"], workdir)}
    return experiment_of([a2c, variant], [a2c["workdir"], gala["workdir"]], experiment, where)


def test_skipped_figures_and_nominal_from_a2c(experiment, tmp_path):
    """Only the A2C run: no disagreement figure (a line says so); the nominal score is its final score,
    which for a few thousand steps of Pong is no better than random play, so no success figure either."""
    a2c = [e for e in json.loads((experiment / "manifest.json").read_text()) if e["algorithm"] == "a2c_allreduce"]
    only_a2c = experiment_of(a2c, [e["workdir"] for e in a2c], experiment, tmp_path / "only_a2c")
    assert report.main(["--experiment", str(only_a2c), "--bootstrap-reps", "50"]) == 0
    md = (only_a2c / "report" / "report.md").read_text()
    assert "- `disagreement.png`: skipped, no GALA run logged gossip/disagreement" in md
    assert not (only_a2c / "report" / "disagreement.png").exists()
    final = row(md, "Final scores", "Pong", "a2c_allreduce", "2")[4]
    nominal = row(md, "Success", "Pong")
    assert nominal[1:3] == [final, "mean final score of 1 A2C run(s) at 2 simulators" + (
        " (not above random play: no success share, no normalised score)" if float(final) <= -20.7 else "")]

    # A nominal score no better than random play (-20.7) defines no success: that figure is skipped.
    out = tmp_path / "nominal_at_random_play"
    args = ["--experiment", str(only_a2c), "--out", str(out), "--bootstrap-reps", "50", "--nominal", "Pong=-21"]
    assert report.main(args) == 0
    assert "- `success_vs_simulators.png`: skipped" in (out / "report.md").read_text()
    assert not (out / "success_vs_simulators.png").exists()


# --- variants: their own label, everywhere but the paired GALA-vs-A2C tests --------------------------------
def test_a_variant_is_reported_under_its_label(experiment, tmp_path):
    """The real A2C run, and the real GALA run as the variant gala_sync (its directory linked there)."""
    only = a2c_and_gala_as_a_variant(experiment, tmp_path / "variant")
    assert report.main(["--experiment", str(only), "--bootstrap-reps", "50", "--nominal", "Pong=-15"]) == 0
    md = (only / "report" / "report.md").read_text()
    assert row(md, "Runs", "gala_sync", "Pong", "2")[3:5] == ["1", "0"]
    assert not re.search(r"\|\s*gala_a2c\s*\|", md)  # no row of the plain algorithm
    assert row(md, "Final scores", "Pong", "gala_sync", "2")[3] == "1"
    assert row(md, "Evaluation", "Pong", "gala_sync", "2")[3] == "1"
    assert row(md, "Throughput", "gala_sync", "2")[4] != "n/a (no A2C run)"  # its SPS ratio is to the plain A2C
    assert (only / "report" / "disagreement.png").stat().st_size > 0  # a GALA run, whatever its label


def test_the_paired_test_takes_the_plain_runs_only():
    def record(label: str, algorithm: str, seed: int, final: float) -> load.RunRecord:
        return load.RunRecord(name=f"{label}/{seed}", algorithm=algorithm, label=label, env_id="Pong-v5",
                                seed=seed, simulators=4, total_timesteps=1000, status="ok",
                                returns=load.Series.by_step([950], [1.0], [final]))

    finals = {"a2c_allreduce": [-20, -19, -18], "gala_a2c": [-19, -17, -18.5], "gala_sync": [10, 12, 11]}
    algorithm = {"a2c_allreduce": "a2c_allreduce", "gala_a2c": "gala_a2c", "gala_sync": "gala_a2c"}
    records = [record(label, algorithm[label], seed, v) for label, vs in finals.items() for seed, v in enumerate(vs, 1)]
    cfg = report.Config(bootstrap_reps=50, nominal=("Pong=18",))
    md = "\n".join(markdown.format_report(tables.compute_report(records, cfg), cfg, "test"))
    paired = scipy.stats.ttest_rel(finals["gala_a2c"], finals["a2c_allreduce"])  # not gala_sync's 11 on average
    assert f"paired over (game, simulators, seed): n = 3, t = {paired.statistic:.3f}, p = {paired.pvalue:.4g}" in md
    assert row(md, "Final scores", "Pong", "gala_sync", "4")[3:5] == ["3", "11.00"]
    assert row(md, "Final scores", "Pong", "gala_a2c", "4")[3:5] == ["3", f"{np.mean(finals['gala_a2c']):.2f}"]
    table = md.split("## Final scores")[1].split("\n## ")[0]
    labels = [line.strip("|").split("|")[1].strip() for line in table.splitlines() if line.startswith("| Pong")]
    assert labels == ["a2c_allreduce", "gala_a2c", "gala_sync"]  # a variant after its algorithm


def test_the_report_is_computed_then_written():
    """compute_report's plain data, and format_report's table of it."""
    finals = {("a2c_allreduce", 4): [-20, -19, -18], ("gala_a2c", 4): [-19, -17, -18], ("a2c_allreduce", 8): [-15]}
    sps = {"a2c_allreduce": 0, "gala_a2c": 50}  # + 100 x seed: medians 200 and 250 over seeds 1-3
    records = [load.RunRecord(name=f"{label}/{sims}/{seed}", algorithm=label, env_id="Pong-v5", seed=seed,
                                simulators=sims, total_timesteps=1000, status="ok",
                                returns=load.Series.by_step([950], [1.0], [final]),
                                sps=load.Series.by_step([100, 950], [1, 2], [1, 100 * seed + sps[label]]))
               for (label, sims), values in finals.items() for seed, final in enumerate(values, 1)]
    cfg = report.Config(bootstrap_reps=50, nominal=("Pong=-16",))
    data = tables.compute_report(records, cfg)
    score = data.scores.set_index(["label", "simulators"])
    assert (score.loc[("gala_a2c", 4), "n"], score.loc[("gala_a2c", 4), "mean"]) == (
        3, pytest.approx(np.mean(finals["gala_a2c", 4])))
    assert score.loc[("gala_a2c", 4), "std"] == pytest.approx(np.std(finals["gala_a2c", 4], ddof=1))
    assert math.isnan(score.loc[("a2c_allreduce", 8), "std"])  # one run
    # Nominal -16, random -20.7: success from -18.35 on; GALA 2 of 3 at 4 simulators, A2C 1 of 3.
    assert data.shares == {
        ("Pong", "a2c_allreduce", 4): (pytest.approx(1 / 3), 3),
        ("Pong", "gala_a2c", 4): (pytest.approx(2 / 3), 3),
        ("Pong", "a2c_allreduce", 8): (1.0, 1),
    }
    paired = scipy.stats.ttest_rel(finals["gala_a2c", 4], finals["a2c_allreduce", 4])
    assert data.ttest_finals == (3, pytest.approx(paired.statistic), pytest.approx(paired.pvalue))
    assert data.ttest_shares is None  # one (game, simulators) cell with both
    ratio = {(row.algorithm, row.simulators): row.ratio for row in data.throughput.itertuples()}
    assert ratio == {("a2c_allreduce", 4): 1.0, ("gala_a2c", 4): pytest.approx(250 / 200), ("a2c_allreduce", 8): 1.0}
    md = "\n".join(markdown.format_report(data, cfg, "test"))
    assert row(md, "Final scores", "Pong", "gala_a2c", "4")[3:6] == [
        "3", f"{np.mean(finals['gala_a2c', 4]):.2f}", f"{np.std(finals['gala_a2c', 4], ddof=1):.2f}"]
    assert row(md, "Final scores", "Pong", "a2c_allreduce", "8")[5] == "n/a"


def test_a_runs_steps_and_rate_are_its_true_total_from_summary_json():
    """GALA's logs count rank 0's own steps x the agents: with agent 1 at half speed, rank 0 logs 1,200 steps where
    the agents made 900 (summary.json's global_step). The runs table takes 900 and rescales the logged SPS by
    900 / 1,200; a run whose summary agrees with its logs keeps both."""
    def record(summary):
        return gala_record(total_timesteps=1200, summary=summary, returns=load.Series.by_step([1200], [9.0], [-20.0]),
                           sps=load.Series.by_step([400, 800, 1200], [3, 6, 9], [80, 100, 120]))
    slowed, even = tables.runs_table([record({"global_step": 900}), record({"global_step": 1200})])[
        ["steps", "sps"]].itertuples(index=False)
    assert (slowed.steps, slowed.sps) == (900, pytest.approx(110 * 900 / 1200))  # median after the first point
    assert (even.steps, even.sps) == (1200, pytest.approx(110))


def test_failed_and_stopped_runs_are_listed_with_why(tmp_path):
    """A failed run says its exit code, a stopped one that it was; neither counts in a statistic."""
    entry = manifest_entry(status="failed", returncode=2)
    stopped = {**entry, "seed": 2, "workdir": "gala_a2c/Pong-v5/sims4/seed2", "status": "stopped", "returncode": 0}
    (tmp_path / "manifest.json").write_text(json.dumps([entry, stopped]))
    records = load.load_local(tmp_path)
    assert [(r.label, r.seed, r.status, r.note) for r in records] == [
        ("gala_a2c", 1, "failed", "exit 2"), ("gala_a2c", 2, "failed", "stopped by a signal")]


def test_runs_without_a_finished_game_are_refused(tmp_path, capsys):
    """An experiment whose runs left no events (only the manifest and their logs were kept) has nothing to report:
    one error, exit 2, no report.md."""
    (tmp_path / "manifest.json").write_text(json.dumps([manifest_entry()]))
    assert report.main(["--experiment", str(tmp_path), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "logged a finished game" in err, err
    assert not (tmp_path / "report" / "report.md").exists()


# --- W&B -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--wandb", "--wandb-report"])
def test_wandb_refuses_offline(flag, experiment, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert report.main([flag, "--experiment", str(experiment), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "WANDB_MODE=offline" in err, err
    assert not (tmp_path / "report.md").exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # wandb_workspaces uses pydantic v1 validators
def test_wandb_report_is_built_without_network():
    cfg = report.Config(wandb_entity="someone", wandb_project="proj", wandb_group="tiny")
    built = figures.wandb_report(cfg, "| a | b |")
    grid, text = built.blocks
    assert text.text == "| a | b |"
    assert grid.runsets[0].project == "proj" and "tiny" in grid.runsets[0].filters
    plots = {(p.x, tuple(p.y)) for p in grid.panels if hasattr(p, "x")}
    assert ("global_step", ("charts/episodic_return",)) in plots
    assert ("RelativeTime(Wall)", ("charts/episodic_return",)) in plots
    assert ("global_step", ("gossip/disagreement_relative",)) in plots
    assert any(getattr(p, "metrics", None) == ["charts/SPS"] for p in grid.panels)
    assert re.match("gala-rl benchmark", built.title)


# --- runs the report must not take at face value ---------------------------------------------------------
def test_series_are_put_in_step_order():
    """GALA's rank 0 logs the other agents' games when they arrive, with earlier steps."""
    series = load.Series.by_step([0, 100, 50, 200], [0, 1, 2, 3], [10, 11, 12, 13])
    assert list(series.step) == [0, 50, 100, 200] and list(series.value) == [10, 12, 11, 13]
    assert list(series.wall) == [0, 2, 1, 3]


def test_a_run_cut_short_has_no_final_score():
    cut = gala_record(name="cut", sps=load.Series.by_step([100, 500], [1, 2], [9, 9]))
    whole = gala_record(name="whole", seed=2, sps=load.Series.by_step([500, 960], [1, 2], [9, 9]))
    cli.apply_final_window([cut, whole], 0.1)
    assert (cut.status, cut.note) == ("failed", "stopped at step 500 of 1000")
    assert whole.status == "ok"


def test_runs_of_one_wall_clock_budget_are_one_cell_whatever_their_steps():
    """Runs ended by --max-seconds make different numbers of steps: compared by their budget, not their steps;
    runs of different budgets, or of different total steps, are refused."""
    def run(seed, steps, budget):
        return gala_record(name=f"r{seed}", seed=seed, total_timesteps=steps,
                           config={"max_seconds": budget} if budget else {},
                           summary={"out_of_time": True} if budget else {})
    assert cli.duplicated_runs([run(1, 1000, 880), run(2, 1200, 880)]) == []
    assert cli.duplicated_runs([run(1, 1000, 880), run(2, 1200, 900)]) == [
        "gala_a2c on Pong-v5 with 4 simulators mixes runs of lengths ['880 s', '900 s'] (steps or seconds)"]
    assert len(cli.duplicated_runs([run(1, 1000, 0), run(2, 1200, 0)])) == 1


def test_the_same_runs_read_twice_are_refused(experiment, tmp_path, capsys):
    assert report.main(["--experiment", str(experiment), str(experiment), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "are both a2c_allreduce on Pong-v5 with 2 simulators, seed 1" in err
    assert not (tmp_path / "report.md").exists()


def test_labels_and_seeds_choose_the_runs_of_the_experiments(experiment, tmp_path, capsys):
    """--labels and --seeds keep only those runs (a study that borrows some runs of another experiment): the A2C
    run alone, said under Source; a choice that leaves no run is refused."""
    out = tmp_path / "a2c"
    assert report.main(["--experiment", str(experiment), "--out", str(out), "--labels", "a2c_allreduce",
                        "--seeds", "1", "--bootstrap-reps", "50"]) == 0
    md = (out / "report.md").read_text()
    assert "labels a2c_allreduce, seeds 1" in md.split("## Runs")[0]
    assert row(md, "Runs", "a2c_allreduce", "Pong", "2")[3] == "1"
    assert not re.search(r"\|\s*gala_a2c\s*\|", md)
    assert report.main(["--experiment", str(experiment), "--out", str(tmp_path / "none"), "--seeds", "2"]) == 2
    assert "error: no runs found of the --labels / --seeds asked" in capsys.readouterr().err
    # Two experiments: this one, and one holding its A2C run again beside its GALA run as the variant gala_sync.
    # Read whole they count A2C twice; --labels takes GALA from this one and the variant from the other.
    other = a2c_and_gala_as_a_variant(experiment, tmp_path / "other")
    both = ["--experiment", str(experiment), str(other), "--bootstrap-reps", "50"]
    assert report.main([*both, "--out", str(tmp_path / "twice")]) == 2
    assert "narrow them with --labels / --seeds" in capsys.readouterr().err
    assert report.main([*both, "--out", str(tmp_path / "two"), "--labels", "gala_a2c", "gala_sync"]) == 0
    md = (tmp_path / "two" / "report.md").read_text()
    assert [row(md, "Runs", label, "Pong", "2")[3] for label in ("gala_a2c", "gala_sync")] == ["1", "1"]
    assert not re.search(r"\|\s*a2c_allreduce\s*\|", md)


def test_a_continued_run_is_joined_to_the_launch_it_continued(tmp_path):
    """Two launches of one run in its workdir: the first logged up to step 700 (its last checkpoint was at 500),
    the second continued from that checkpoint (config.json: resume, start_step 500). Their events join at 500:
    the first's up to it, then the second's, its wall seconds counted on from the first's last kept event."""
    from torch.utils.tensorboard import SummaryWriter

    def launch(name: str, steps: range, config: dict) -> Path:
        run_dir = tmp_path / "runs" / name
        writer = SummaryWriter(str(run_dir))  # its first event: the creation, at about `start`
        start = time.time()
        for step in steps:
            writer.add_scalar("charts/episodic_return", step / 100, step, walltime=start + (step - steps[0]) / 10)
        writer.close()
        (run_dir / "config.json").write_text(json.dumps(config))
        return run_dir

    launch("first", range(100, 800, 100), {"resume": None, "start_step": 0})
    second = launch("second", range(600, 1100, 100), {"resume": "runs/first/checkpoint.pt", "start_step": 500})
    joined = load.read_events(second)["charts/episodic_return"]
    assert joined.step.tolist() == [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]
    assert joined.value.tolist() == pytest.approx([s / 100 for s in joined.step])
    # Each launch: 10 s per 100 steps from its first event; the second's seconds follow the first's 40 s at step 500.
    assert joined.wall.tolist() == pytest.approx([0, 10, 20, 30, 40, 40, 50, 60, 70, 80], abs=0.5)


def test_quarters_and_the_score_at_a_time_by_hand():
    steps, walls, returns = [100, 300, 600, 700, 990], [10, 30, 60, 70, 99], [1, 2, 3, 5, 8]
    q = stats.quarter_scores(steps, returns, 1000)  # quarters [0, 250) [250, 500) [500, 750) [750, 1000]
    assert q == [1, 2, 4, 8]
    assert math.isnan(stats.quarter_scores([100], [1], 1000)[2])
    assert stats.score_at(walls, returns, 70, window=0.25) == 4  # games in [52.5, 70]: 3 and 5
    assert stats.score_at(walls, returns, 40, window=0.1) == 2  # none in [36, 40]: the last before, 2
    assert math.isnan(stats.score_at(walls, returns, 5))


def test_equal_time_is_each_game_and_seeds_shortest_run():
    """Seed 1's two runs last 100 and 80 s, seed 2's (a machine twice as fast) 50 and 40 s: each seed's runs are
    read at its own shortest run's seconds (80 s, 40 s), not at the game's shortest (40 s)."""
    def record(label, seed, seconds):
        walls = np.arange(10, seconds + 1, 10)  # a game every 10 s scoring its end second: the score says the time
        return load.RunRecord(name=f"{label}/{seed}", algorithm=label, env_id="Pong-v5", seed=seed, simulators=4,
                              total_timesteps=1000, status="ok",
                              returns=load.Series.by_step(walls * 10, walls, walls))
    runs = {("a2c_allreduce", 1): 100, ("gala_a2c", 1): 80, ("a2c_allreduce", 2): 50, ("gala_a2c", 2): 40}
    data = tables.compute_report([record(label, seed, s) for (label, seed), s in runs.items()],
                                 report.Config(bootstrap_reps=20, final_window=0.25))
    assert data.times == {("Pong", 1): 80.0, ("Pong", 2): 40.0}
    at_time = {(r.label, r.seed): r.at_time for r in data.table.itertuples()}
    # games ending in the last 25% of each seed's time: [60, 80] s -> 60, 70, 80; [30, 40] s -> 30, 40
    assert at_time == {("a2c_allreduce", 1): 70.0, ("gala_a2c", 1): 70.0, ("a2c_allreduce", 2): 35.0,
                       ("gala_a2c", 2): 35.0}


def test_the_score_at_every_n_steps_is_read_as_the_final_score_is():
    """--every-steps 500 on runs of 1,000 steps with a game every 100 steps scoring its end step / 100: at 500 the
    games in the last 25% of 500 steps, [375, 500]: 4 and 5; at 1,000 those in [750, 1000]: 8, 9, 10, the final
    score. Two seeds of A2C, the second scoring 2 more: mean ± std over seeds."""
    steps = np.arange(100, 1001, 100)
    records = [load.RunRecord(name=f"a2c/{seed}", algorithm="a2c_allreduce", env_id="Pong-v5", seed=seed,
                              simulators=4, total_timesteps=1000, status="ok", final_window=0.25,
                              returns=load.Series.by_step(steps, steps / 10, steps / 100 + 2 * (seed - 1)))
               for seed in (1, 2)]
    cfg = report.Config(bootstrap_reps=20, final_window=0.25, every_steps=500)
    data = tables.compute_report(records, cfg)
    assert [at for at in data.table["at_steps"]] == [{500: 4.5, 1000: 9.0}, {500: 6.5, 1000: 11.0}]
    assert data.table["final"].tolist() == [9.0, 11.0]
    md = "\n".join(markdown.format_report(data, cfg, "test"))
    spread = f"{np.std([4.5, 6.5], ddof=1):.2f}"
    assert row(md, "At every 500 steps", "Pong", "a2c_allreduce", "4")[3:] == [
        "2", f"5.50 ± {spread}", f"10.00 ± {spread}"]
    plain = report.Config(bootstrap_reps=20, final_window=0.25)  # without --every-steps: no such section
    assert "## At every" not in "\n".join(markdown.format_report(tables.compute_report(records, plain), plain, "t"))


def test_the_panels_of_a_game():
    """A2C vs GALA first; each variant beside A2C and its algorithm, once each; a variant of both as a pair."""
    labels = ["gala_slow", "a2c_allreduce", "a2c_slow", "gala_a2c", "gala_sync"]
    assert figures.comparisons(labels) == [
        ("A2C vs GALA", ["a2c_allreduce", "gala_a2c"]), ("a2c_slow", ["a2c_allreduce", "a2c_slow"]),
        ("gala_slow", ["a2c_allreduce", "gala_a2c", "gala_slow"]),
        ("gala_sync", ["a2c_allreduce", "gala_a2c", "gala_sync"]),
        ("a2c_slow vs gala_slow", ["a2c_allreduce", "gala_a2c", "a2c_slow", "gala_slow"])]


def test_each_simulator_count_has_its_own_returns_panel(tmp_path, monkeypatch):
    """Runs at several simulator counts (Fig 1a) are never averaged together: a panel per count, its runs only."""
    drawn = []
    monkeypatch.setattr(figures, "save", lambda plt, fig, path: drawn.append(fig) or True)
    games = load.Series.by_step([100, 200, 300], [1, 2, 3], [1.0, 2.0, 3.0])
    records = [gala_record(algorithm=algorithm, simulators=sims, seed=seed, returns=games)
               for algorithm, sims in [("a2c_allreduce", 16), ("a2c_allreduce", 128), ("gala_a2c", 128)]
               for seed in (1, 2)]
    assert figures.plot_returns(records, "step", 1, 10, tmp_path / "returns.png")
    panels = [ax for ax in drawn[0].axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["Pong, 16 simulators", "Pong, 128 simulators: A2C vs GALA"]
    assert [[t.get_text() for t in ax.get_legend().get_texts()] for ax in panels] == [
        ["a2c_allreduce (mean of 2)"], ["a2c_allreduce (mean of 2)", "gala_a2c (mean of 2)"]]
    drawn.clear()
    assert figures.plot_returns(records[2:], "step", 1, 10, tmp_path / "one_count.png")
    assert [ax.get_title() for ax in drawn[0].axes if ax.get_visible()] == ["Pong: A2C vs GALA"]


def test_time_to_a_score_and_the_time_curve_take_the_games_in_time_order():
    """A slower GALA agent stamps its games with its own (lower) steps, so a run's games in step order are not in
    time order: the time to a score and the curve against time follow the games as they ended."""
    steps, walls, returns = [100, 200, 300, 400], [10, 40, 20, 30], [0, 10, 0, 10]
    # In time order 0, 0, 10, 10: the mean of the last 2 games first reaches 5 at 30 s, with the game of step 400.
    assert stats.time_to(walls, steps, returns, target=5, smooth=2) == (30, 400)
    assert stats.score_at([10, 30, 20], [1, 2, 3], 35, window=0.01) == 2  # the last game before 35 s ended at 30 s
    run = gala_record(total_timesteps=400, returns=load.Series.by_step(steps, walls, returns))
    ((xs, ys),), _ = figures.curves([run], "wall", 2, 10)
    assert sorted(xs) == list(xs) and list(ys) == [0, 0, 5, 10]


def test_gossip_statistics_over_every_agent_by_hand():
    """Two agents' counters as summary.json holds them: agent 1 finished 10 s later, both at 5 updates/s."""
    agent = {"updates": 100, "mixes": 90, "longest_without_mix": 2}
    summary = {"ranks": [{**agent, "rank": 0, "seconds": 20.0, "ages": {"1": 60, "2": 30}},
                         {**agent, "rank": 1, "seconds": 30.0, "mixes": 80, "longest_without_mix": 5,
                          "ages": {"0": 40, "1": 40}}]}
    got = stats.gossip_statistics(summary)
    assert got["mix_rate"] == pytest.approx(170 / 200)
    assert got["message_age"] == pytest.approx((60 + 60 + 40) / 170)
    assert (got["longest_without_mix"], got["finish_spread_s"]) == (5, 10.0)
    assert got["drift_updates"] == pytest.approx(10 * (100 / 20 + 100 / 30) / 2)
    assert got["weights"] == "-"  # push-sum's weights: only the runs made with the removed --mixing push-sum
    weighted = {"ranks": [{**rank, "weight": w} for rank, w in zip(summary["ranks"], (0.5, 1.5))]}
    assert stats.gossip_statistics(weighted)["weights"] == "0.50-1.50"
    assert all(math.isnan(v) for v in stats.gossip_statistics({"ranks": [{"rank": 0, "updates": 3}]}).values())


# --- across games (the six-games study: Agarwal et al. 2021 with rliable) -------------------------------------
def pairs_above(x, y) -> float:
    """P(a run of X beats a run of Y) on one game, counted pair by pair: wins 1, ties 1/2."""
    return np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a in x for b in y])


def test_iqm_and_mean_over_games_by_hand():
    # all runs of all games: 0 1 2 10 20 30 40 100 -> IQM cuts 2 on each side: (2 + 10 + 20 + 30) / 4
    scores = {"a": np.array([[0.0, 10], [1, 20], [2, 30], [100, 40]])}
    got = stats.aggregates_with_ci(scores, reps=200, seed=1)["a"]
    assert got["IQM"][0] == pytest.approx(15.5)
    assert got["IQM"][0] == pytest.approx(scipy.stats.trim_mean(scores["a"].ravel(), 0.25))
    assert got["mean"][0] == pytest.approx(((0 + 1 + 2 + 100) / 4 + (10 + 20 + 30 + 40) / 4) / 2)
    for point, low, high in got.values():
        assert low <= point <= high
    # Runs alike within each game: a bootstrap that resamples runs within each game (stratified) has nothing to vary
    alike = stats.aggregates_with_ci({"a": np.array([[1.0, 5.0]] * 4)}, reps=200, seed=1)["a"]
    assert alike == {"IQM": pytest.approx((3, 3, 3)), "mean": pytest.approx((3, 3, 3))}


def test_probability_of_improvement_counts_pairs_by_hand():
    ahead, behind = np.array([[5.0, 50], [6, 60]]), np.array([[1.0, 10], [2, 20], [3, 30]])
    assert stats.probability_of_improvement(ahead, behind, reps=200, seed=0) == pytest.approx((1, 1, 1))
    assert stats.probability_of_improvement(behind, ahead, reps=200, seed=0) == pytest.approx((0, 0, 0))
    # game 1: 1 beats none, 4 beats 2 and 3 and ties 4, 7 beats all three: 5.5 of 9; game 2: 10, 20 beat 5, 30 beats
    # 5 and 25: 4 of 9 (the Mann-Whitney U over the pairs)
    x, y = np.array([[1.0, 10], [4, 20], [7, 30]]), np.array([[2.0, 5], [3, 25], [4, 35]])
    p, low, high = stats.probability_of_improvement(x, y, reps=200, seed=0)
    assert p == pytest.approx((5.5 / 9 + 4 / 9) / 2)
    assert p == pytest.approx(np.mean([pairs_above(x[:, g], y[:, g]) for g in range(2)]))
    assert 0 <= low <= p <= high <= 1
    assert stats.probability_of_improvement(np.array([[3.0], [5]]), np.array([[1.0], [4], [6]]), 50, 0)[0] == 0.5


def test_performance_profile_is_the_share_of_runs_above_each_score():
    scores = {"a": np.array([[0.2, 1.5], [0.8, 3.0]])}
    taus = np.array([0.0, 0.5, 1.0, 2.0, 3.0])
    shares, intervals = stats.performance_profiles(scores, taus, reps=200, seed=0)
    assert shares["a"] == pytest.approx([1, 0.75, 0.5, 0.25, 0])
    assert shares["a"] == pytest.approx([np.mean(scores["a"] > tau) for tau in taus])
    assert intervals["a"].shape == (2, len(taus))
    assert np.all(intervals["a"][0] <= shares["a"] + 1e-12) and np.all(shares["a"] <= intervals["a"][1] + 1e-12)


def two_games(random_play_file: Path, a2c_breakout: tuple[float, float] = (11.0, 21.0)) -> tuple[list, dict]:
    """A2C and GALA on Breakout and Pong, seeds 1-2, 64 simulators, with their evaluations; random play on Breakout
    measured (mean 1.0, std 1.0 over 3 games, written as studies/random_play.py writes it), on Pong the tabulated
    -20.7. Returns the records and the finals: finals[label][game] = [seed 1, seed 2]."""
    from studies.random_play import entry

    random_play_file.write_text(json.dumps({"Breakout-v5": entry(np.array([0.0, 2.0, 1.0]), np.array([150, 200, 170]),
                                                                 "python -m studies.random_play", "abc", 1, "1.2.5")}))
    finals = {"a2c_allreduce": {"Breakout": list(a2c_breakout), "Pong": [-0.7, 9.3]},
              "gala_a2c": {"Breakout": [8.0, 13.0], "Pong": [-10.7, 4.3]}}
    records = [load.RunRecord(name=f"{label}/{game}/{seed}", algorithm=label, env_id=f"{game}-v5", seed=seed,
                              simulators=64, total_timesteps=1000, status="ok",
                              returns=load.Series.by_step([500, 950], [5.0, 9.0], [final - 5, final]),
                              eval_argmax=final + 1, eval_sampled=final - 1)
               for label, games in finals.items() for game, values in games.items()
               for seed, final in enumerate(values, 1)]
    return records, finals


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_the_comparison_across_games_by_hand(tmp_path):
    records, finals = two_games(tmp_path / "random_play.json")
    cfg = report.Config(bootstrap_reps=100, random_play=tmp_path / "random_play.json")
    data = tables.compute_report(records, cfg)
    md = "\n".join(markdown.format_report(data, cfg, "test"))
    random = {"Breakout": 1.0, "Pong": -20.7}
    assert row(md, "Random play", "Breakout")[1:4] == ["1.00", f"measured: 3 games ({tmp_path / 'random_play.json'})",
                                                      "3.48"]  # the 95% CI's upper end: 1 + 4.303 x 1 / sqrt(3)
    assert row(md, "Random play", "Pong")[1:5] == ["-20.70", "tabulated: Mnih et al. 2015 (other emulator settings)",
                                                  "-20.70", "-20.70"]

    a2c, gala = finals["a2c_allreduce"], finals["gala_a2c"]
    for game, r in random.items():
        # GALA above random as a share of A2C's: of the means, and seed by seed (8 - 1) / (11 - 1) = 0.7 ...
        ratio = (np.mean(gala[game]) - r) / (np.mean(a2c[game]) - r)
        per_seed = [(g - r) / (a - r) for g, a in zip(gala[game], a2c[game])]
        cells = row(md, "Against A2C per game", game, "64")
        assert cells[3] == f"{a2c[game][0]:.2f} (s1), {a2c[game][1]:.2f} (s2)"
        assert cells[6] == f"{gala[game][0]:.2f} (s1), {gala[game][1]:.2f} (s2)"
        assert cells[-1] == f"{ratio:.2f} [{min(per_seed):.2f}-{max(per_seed):.2f}]"
    assert row(md, "Against A2C per game", "Breakout")[-1] == "0.63 [0.60-0.70]"  # 9.5 / 15; 12 / 20, 7 / 10

    # Over both games x both seeds: each score normalised by A2C's mean on its game
    normalised = {label: np.array([[(v - random[g]) / (np.mean(a2c[g]) - random[g]) for g, v in
                                    ((g, finals[label][g][seed]) for g in ("Breakout", "Pong"))] for seed in (0, 1)])
                  for label in finals}
    (final, *evaluations) = data.across
    assert (final.score, final.games, [e.score for e in evaluations]) == (
        "final", ["Breakout", "Pong"], ["eval_argmax", "eval_sampled"])
    for label, matrix in normalised.items():
        assert final.normalised[label] == pytest.approx(matrix)
        assert final.aggregates[label]["IQM"][0] == pytest.approx(np.sort(matrix.ravel())[1:3].mean())
        assert final.aggregates[label]["mean"][0] == pytest.approx(matrix.mean(axis=0).mean())
    assert final.aggregates["a2c_allreduce"]["mean"][0] == pytest.approx(1.0)  # A2C's mean, by construction
    # P(GALA > A2C): Breakout 8, 13 against 11, 21: 1 pair of 4; Pong -10.7, 4.3 against -0.7, 9.3: 1 of 4
    p = final.improvement["gala_a2c"]
    assert p[0] == pytest.approx(0.25)
    assert p[0] == pytest.approx(np.mean([pairs_above(gala[g], a2c[g]) for g in random]))
    cells = row(md, "Across games", "final", "64", "gala_a2c")
    assert cells[3:5] == ["2", "2"] and cells[-1] == f"{p[0]:.2f} [{p[1]:.2f}, {p[2]:.2f}]"
    assert cells[5].startswith(f"{np.sort(normalised['gala_a2c'].ravel())[1:3].mean():.2f} [")
    taus, shares, _ = data.profiles[64]
    assert shares["gala_a2c"] == pytest.approx([np.mean(normalised["gala_a2c"] > tau) for tau in taus])

    # The final policy's evaluation per game and arm: mean ± std over seeds, and each seed's
    cells = row(md, "Evaluation", "Pong", "gala_a2c", "64")
    assert cells[3:] == ["2", f"{np.mean(gala['Pong']) + 1:.2f} ± {np.std(gala['Pong'], ddof=1):.2f}",
                         f"{np.mean(gala['Pong']) - 1:.2f} ± {np.std(gala['Pong'], ddof=1):.2f}",
                         "-9.70 (s1), 5.30 (s2)", "-11.70 (s1), 3.30 (s2)"]


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_an_a2c_within_random_plays_noise_normalises_nothing(tmp_path):
    """A2C's Breakout mean 1.75 is above random play's 1.0 but inside its 95% CI (upper end 3.48): Breakout is no
    reference (the dead-A2C case: dividing by 0.75 would make GALA's 8 and 13 ratios of 10 and 16): no ratio against
    A2C, no normalised score, no success share there, left out across games with why; Pong still counts."""
    records, _ = two_games(tmp_path / "random_play.json", a2c_breakout=(1.5, 2.0))
    cfg = report.Config(bootstrap_reps=50, random_play=tmp_path / "random_play.json")
    data = tables.compute_report(records, cfg)
    md = "\n".join(markdown.format_report(data, cfg, "test"))
    assert row(md, "Against A2C per game", "Breakout", "64")[-1] == "n/a [A2C not above random play]"
    assert "| Breakout " not in md.split("## Normalised by A2C")[1].split("\n## ")[0]
    (final, *_) = data.across
    assert final.games == ["Pong"]
    assert final.left_out[0] == ("Breakout (A2C's mean 1.75 is not above random play, 1.00, the upper end of its 95% "
                                 "CI 3.48)")
    assert not any(game == "Breakout" for game, _, _ in data.shares)
    said = "(not above random play, the upper end of its 95% CI 3.48: no success share, no normalised score)"
    assert said in row(md, "Success", "Breakout")[2]


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_game_without_an_a2c_evaluation_is_said_left_out(tmp_path):
    """A2C's Breakout runs have no evaluation (their checkpoints gone): the argmax comparison is over Pong alone, and
    says why Breakout is not in it."""
    records, _ = two_games(tmp_path / "random_play.json")
    for r in records:
        if r.label == "a2c_allreduce" and r.env_id == "Breakout-v5":
            r.eval_argmax = math.nan
    data = tables.compute_report(records, report.Config(bootstrap_reps=50, random_play=tmp_path / "random_play.json"))
    (argmax,) = [a for a in data.across if a.score == "eval_argmax"]
    assert argmax.games == ["Pong"] and argmax.left_out == ["Breakout (no A2C score)"]


def test_random_play_measured_else_tabulated(tmp_path, monkeypatch):
    """The report reads the study's file: a game in it counts from the measured mean, one not in it from the tabulated
    score, any other from 0; no file (the default, results/random_play.json, absent) measures nothing."""
    from benchmark.report import games

    two_games(tmp_path / "random_play.json")
    measured = games.read_random_play(tmp_path / "random_play.json")
    assert measured["Breakout"]["mean"] == 1.0 and measured["Breakout"]["games"] == 3
    assert games.random_play("Breakout", measured).score == 1.0
    # the upper end of the 95% CI of the mean of 0, 2, 1: t(0.975, 2 degrees of freedom) = 4.303 (the t table)
    assert games.random_play("Breakout", measured).above == pytest.approx(1.0 + 4.303 * np.std([0, 2, 1], ddof=1)
                                                                         / np.sqrt(3), abs=1e-3)
    assert games.random_play("Pong", measured) == (-20.7, "tabulated: Mnih et al. 2015 (other emulator settings)",
                                                   -20.7)
    assert games.random_play("Tennis", measured) == (0.0, "none known: 0", 0.0)
    monkeypatch.setattr(games, "RANDOM_PLAY_FILE", tmp_path / "absent.json")
    assert games.read_random_play(None) == {}
    with pytest.raises(ValueError, match="no file"):
        games.read_random_play(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text(json.dumps({"Pong-v5": {"mean": "-21"}}))
    with pytest.raises(ValueError, match="Pong-v5 has no numeric"):
        games.read_random_play(tmp_path / "bad.json")


def test_the_per_game_figures_are_readme_width(tmp_path):
    import matplotlib.image

    records, _ = two_games(tmp_path / "random_play.json")
    for x in ("step", "wall"):
        assert figures.plot_games(records, x, 1, 20, tmp_path / f"games_{x}.png")
        assert matplotlib.image.imread(tmp_path / f"games_{x}.png").shape[1] == 800
    cfg = report.Config(bootstrap_reps=50, random_play=tmp_path / "random_play.json")
    assert figures.plot_profiles(tables.compute_report(records, cfg).profiles, tmp_path / "profile.png")
    assert matplotlib.image.imread(tmp_path / "profile.png").shape[1] == 800
    assert not figures.plot_profiles({}, tmp_path / "none.png") and not (tmp_path / "none.png").exists()


def test_dead_units_end_values_in_the_table_and_a_curve_per_layer(tmp_path):
    """A run's dead-unit share per layer is its last logged value (report.md's Dead units section); a run that
    logged none has no row; dead_units.png is drawn from the series and skipped where no run logged them."""
    dead = {layer: load.Series.by_step([100, 500, 900], [1, 2, 3], [0.0, 0.1 * i, 0.3 * i])
            for i, layer in enumerate(load.HIDDEN)}
    records = [gala_record(name="dying", returns=load.Series.by_step([950], [1.0], [-20.0]), dead_units=dead),
               gala_record(name="old", seed=2, returns=load.Series.by_step([950], [1.0], [-19.0]))]
    data = tables.compute_report(records, report.Config(bootstrap_reps=50))
    md = "\n".join(markdown.format_report(data, report.Config(bootstrap_reps=50), "test"))
    assert row(md, "Dead units", "gala_a2c", "Pong", "4", "1")[4:] == ["-20.00", "0.00", "0.30", "0.60", "0.90"]
    with pytest.raises(AssertionError):
        row(md, "Dead units", "gala_a2c", "Pong", "4", "2")
    assert figures.plot_dead_units(records, tmp_path / "dead.png") and (tmp_path / "dead.png").stat().st_size > 0
    assert not figures.plot_dead_units(records[1:], tmp_path / "none.png")
    # A line's legend names the game and the simulator count only where the runs have several.
    assert figures.legend_key(records)(records[0]) == "gala_a2c"
    several = records + [gala_record(simulators=8), gala_record(env_id="Breakout-v5")]
    assert [figures.legend_key(several)(r) for r in several[2:]] == ["gala_a2c Pong 8 sims", "gala_a2c Breakout 4 sims"]
