"""`hivemind-worker demo`, the README's first command, runs a real task end to end."""

import re
import shutil
import tarfile
from pathlib import Path

from tests.conftest import cli


def test_demo_runs_a_sample_task_and_keeps_its_result(task_image):
    done = cli("demo", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sum of squares below one million: 333332833333500000" in done.stdout
    where = Path(re.search(r"Everything the demo made is in (\S+) ", done.stdout).group(1))
    try:
        [archive] = list((where / "results").glob("*.tar.gz"))
        with tarfile.open(archive) as tar:
            assert b"333332833333500000" in tar.extractfile("output/result.json").read()
        assert "connected" in done.stdout
    finally:
        shutil.rmtree(where, ignore_errors=True)
