"""The one-off studies' own measures, on hand-made inputs where the answer is known."""

import numpy as np

from studies.official_gala import Learner, Run, ages, draw, drift, gossip_cells, group_of, summary_counts


def test_message_age_and_drift_of_the_side_by_side_by_hand():
    """Two learners on a ring of two. Learner 0 writes at t = 1, 2, 3, 4 (its updates 1-4), learner 1 at t = 1.5,
    3.5. Learner 1 mixes 0's update 1 at t = 1.6 (0 has begun no later update: age 0) and 0's update 2 at t = 3.6
    (0 began 3 after it: age 1); learner 0 mixes 1's update 1 at t = 3.2 (age 0) and its update 2 at t = 4.1
    (age 0). When learner 1 made its last write point (t = 3.5), learner 0 had one update
    left (t = 4); their last write points are 0.5 s apart."""
    learners = [Learner(np.array([1.0, 2.0, 3.0, 4.0]), [(3.2, 1, 1), (4.1, 1, 2)], 0),
                Learner(np.array([1.5, 3.5]), [(1.6, 0, 1), (3.6, 0, 2)], 1)]
    assert sorted(ages(learners).tolist()) == [0, 0, 0, 1]
    assert drift(learners) == (1, 0.5)


def test_an_untraced_run_of_ours_gives_its_mix_rate_and_skipped_writes_from_its_summary():
    """Two agents: 10 + 30 updates, 8 + 21 of them mixed, 1 + 3 writes skipped: 29 / 40 and 4 / 40."""
    summary = {"ranks": [{"updates": 10, "mixes": 8, "skipped": 1}, {"updates": 30, "mixes": 21, "skipped": 3}]}
    assert summary_counts(summary) == (29 / 40, 4 / 40)
    assert gossip_cells([], summary_counts(summary)) == ["0.725", "0.100", "-", "-", "-", "-"]
    assert gossip_cells([]) == ["-"] * 6


def test_the_side_by_side_figure_groups_runs_by_label_and_draws_them(tmp_path):
    assert [group_of(x) for x in ("theirs-s1", "ours-after-s12", "ours")] == ["theirs", "ours-after", "ours"]
    games = np.column_stack([np.arange(1, 301) * 100.0, np.linspace(0, 30, 300)])
    runs = {f"{code}-s{s}": Run(code, [], games + [0, s], 30000, 1.0) for code in ("ours", "theirs") for s in (1, 2)}
    draw(runs, 10, tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_warmup_studys_rmsprop_takes_its_first_steps_from_the_square_average_it_starts_at():
    """Ground truth by hand: the first two steps of RMSprop, square average a <- alpha a + (1 - alpha) g^2,
    p <- p - lr g / (sqrt(a) + eps), from a = 0 (torch's start) and a = 1 (TF1's)."""
    import torch

    from studies.gala_diagnosis import rmsprop

    lr, alpha, eps, grads = 1e-3, 0.99, 1e-5, [torch.tensor([0.5, -2e-3, 0.0]), torch.tensor([0.1, 1e-3, -0.3])]
    for start in (0.0, 1.0):
        param = torch.nn.Parameter(torch.tensor([1.0, -1.0, 0.25]))
        optimizer = rmsprop([param], lr, alpha, eps, start)
        expected, square = param.detach().clone(), torch.full((3,), start)
        for g in grads:
            param.grad = g.clone()
            optimizer.step()
            square = alpha * square + (1 - alpha) * g * g
            expected -= lr * g / (square.sqrt() + eps)
            assert torch.allclose(param.detach(), expected, rtol=0, atol=1e-7), start
    # the two starts differ where it matters: torch's first step is ~10 lr in the gradient's sign
    fresh = torch.nn.Parameter(torch.zeros(1))
    fresh.grad = torch.tensor([0.5])
    rmsprop([fresh], lr, alpha, eps, 0.0).step()
    assert abs(fresh.item() + 10 * lr) < 1e-3 * 10 * lr  # eps makes it 9.998 lr
