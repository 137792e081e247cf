"""`python -m benchmark report`: the paper's figures and tables from the runs of an experiment.

Reads the runs of `python -m benchmark run` — locally from `bench_runs/<experiment>/manifest.json`
and each run's TensorBoard events, config.json, summary.json and eval.json (the contract in
benchmark/common.py), or online from W&B (`--wandb`: the runs of one group, their config and history) —
into one `RunRecord` each, then into a pandas table of one row per run (`runs_table`: label, game,
simulators, seed, final score, score per quarter of the steps, score at equal wall-clock time, SPS,
gossip statistics), from which every table of report.md is a group-by, and writes into `--out`
(default `<experiment>/report/`):

- `returns_vs_steps.png`, `returns_vs_time.png` (GALA paper Fig 1b–g): episodic return against global
  steps and against wall-clock seconds, one panel per comparison (A2C vs GALA; each variant of GALA
  beside both; A2C vs the other baselines), one row of panels per game; each seed a thin line, the
  mean over seeds bold (on the steps or seconds that every seed reached);
- `success_vs_simulators.png` (Fig 1a): share of runs whose final score reaches a fraction of the
  game's nominal score, against the number of simulators;
- `disagreement.png` (Fig 2): GALA's relative disagreement against global steps, a line per run;
- `throughput.png` (Fig 3): steps per second and CPU (GPU) utilisation per label;
- `games_vs_steps.png`, `games_vs_time.png`: A2C and GALA at README width (800 pixels), one panel per
  game, each seed thin and the mean bold;
- `performance_profile.png` (Agarwal et al. 2021): the share of runs of all games above each
  A2C-normalised final score, a line per label with its 95% CI band;
- `report.md`: runs found, final scores (mean, std, IQM with rliable's stratified-bootstrap CI), the
  score per quarter of the steps, the score at equal wall-clock time, scores normalised by A2C's with
  bootstrap CIs per step and per second; the random-play score of each game (measured by
  `python -m studies.random_play` where results/random_play.json has it, else the tabulated one, said
  which); each label against A2C per game (final score per seed, its score above random play as a share
  of A2C's with the range seed by seed); over all games x seeds the IQM and mean of A2C-normalised
  scores and the probability of improvement over A2C, with CIs (rliable); success shares, paired
  t-tests of GALA vs A2C (as the authors' rebuttal did for Fig 1a), the final policy's evaluation
  (Table 1: argmax and sampled, mean and per seed), SPS ratios, GALA's gossip statistics.

A variant of an algorithm (`python -m benchmark run --variant LABEL=...`) is its own line, row and bar
under its label everywhere but the paired GALA-vs-A2C tests, which take the plain runs.

The package, in the order the data flow through it:
- `games.py`: a game's key (`Pong-v5` -> `Pong`), its random-play score, the GAME=SCORE arguments;
- `load.py`: the runs read into `RunRecord`s (`load_local`, `load_wandb`);
- `stats.py`: small pure functions (`final_score`, `iqm_with_ci`, `paired_ttest`, `success_share`,
  `run_sps`, `score_at`; over games x runs with rliable `aggregates_with_ci`, `probability_of_improvement`,
  `performance_profiles`, ...) that the tests call directly;
- `tables.py`: `runs_table` and `compute_report`, report.md's numbers as tables;
- `markdown.py`: `format_report`, which writes them out, a function per section;
- `figures.py`: the plot functions, which only draw, and `wandb_report` (`--wandb-report` builds the same
  view as a W&B report with wandb_workspaces and prints its URL);
- `config.py`: `Config`, the flags;
- `cli.py`: `make_report`, which runs the rest, and `main`.

    python -m benchmark report                                  # the newest bench_runs/<experiment>
    python -m benchmark report --experiment bench_runs/paper --nominal Pong=18 Breakout=400
    python -m benchmark report --wandb --wandb-group paper --wandb-report
    python -m benchmark report --experiment bench_runs/six-games             # random play: results/random_play.json
"""

from benchmark.report.cli import Config, main, make_report

__all__ = ["Config", "main", "make_report"]
