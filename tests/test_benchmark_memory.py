"""studies.memory reads each rank's memory from the processes a launcher started: checked against a child
that holds a known amount of memory, under a launcher as mpirun starts its ranks (rank in the environment)."""

import os
import subprocess
import sys

import psutil
from conftest import ROOT

sys.path.insert(0, str(ROOT))
from studies.memory import Config, Rank, sample, table  # noqa: E402

HOLD = 'import time; b = bytearray(300 * 2**20); b[::4096] = b"x" * (300 * 256); print(1, flush=True); time.sleep(30)'


def test_sample_reads_the_memory_a_rank_holds():
    """A child of a shell holds 300 MiB (every page touched): its RSS and PSS are at least that, PSS at most
    RSS, and its rank comes from PMI_RANK; a process that runs something else is not sampled."""
    launcher = subprocess.Popen(["bash", "-c", f"{sys.executable} -c '{HOLD}' holder.py & sleep 30 & wait"],
                                env={**os.environ, "PMI_RANK": "3"}, stdout=subprocess.PIPE, text=True)
    try:
        assert launcher.stdout.readline().strip() == "1"
        ranks: dict[int, Rank] = {}
        sample(psutil.Process(launcher.pid), "holder.py", ranks)
        assert list(ranks) == [3]  # the sleep is not sampled
        (rank,) = ranks.values()
        assert 300 <= rank.pss[0] <= rank.rss[0] < 300 + 200
    finally:
        for child in psutil.Process(launcher.pid).children(recursive=True):
            child.kill()
        launcher.kill()
        launcher.wait()


def test_the_table_reports_peaks_growth_and_ranks_per_node():
    ranks = {0: Rank(0, rss=[100, 400, 500, 600], pss=[50, 300, 350, 410]), 1: Rank(1, rss=[90, 95], pss=[60, 70])}
    text = table(Config(node_gib=4.0), {"impala_atari.py": (ranks, 12.0)})
    assert "| impala_atari.py | learner | 600 | 410 | +100 | 4 | 12 |" in text  # growth: 600 - rss[2]
    assert "| impala_atari.py | actor (1) | 95 | 70 | +0 | 2 | 12 |" in text
    assert "largest rank 410 MiB PSS -> 9 ranks per 4 GiB node" in text  # 4096 // 410
