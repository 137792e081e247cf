"""benchmark.gala_diagnosis's reading of the study's runs, against values worked out by hand."""

import sys

import numpy as np
from conftest import ROOT

sys.path.insert(0, str(ROOT))
from benchmark.gala_diagnosis import AGENT_LINE, quarters  # noqa: E402


def test_quarters_are_the_mean_return_of_each_quarter_of_the_steps():
    steps = np.array([10, 20, 30, 60, 99, 100])
    returns = np.array([1.0, 2.0, 3.0, 5.0, 7.0, 9.0])
    got = quarters(steps, returns, 100)  # quarters (0, 25], (25, 50], (50, 75], (75, 100]
    assert got[0] == 1.5 and got[1] == 3.0 and got[2] == 5.0 and got[3] == 8.0
    assert np.isnan(quarters(np.array([90]), np.array([1.0]), 100)[0])


def test_agent_lines_are_read_even_when_the_ranks_wrote_them_together():
    out = ("[agent 0] 10 updates in 1.0 s; gossip: sent 9, received 8, mixes 8, skipped 1, longest_without_mix 2; "
           "message ages {0: 3, 1: 5}[agent 1] 10 updates in 1.1 s; gossip: sent 8, received 9, mixes 9, skipped 2, "
           "longest_without_mix 0; message ages {-1: 9}\n")
    assert AGENT_LINE.findall(out) == [("0", "8", "1", "2", "{0: 3, 1: 5}"), ("1", "9", "2", "0", "{-1: 9}")]
