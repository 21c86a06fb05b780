"""``snp`` under torchrun with one process made to fail or to hang at its first all-reduce.

    torchrun --nproc_per_node 2 -m tests.cli.faulty_rank fail|hang ARGV... --distributed

Process 1 raises a user error (``fail``) or sleeps far past the collective timeout (``hang``)
where it would sum its statistics; every other process runs ``snp`` unchanged. The tests of
failure behaviour start it.
"""

from __future__ import annotations

import os
import sys
import time

from snp_engine.cli import main
from snp_engine.errors import SnpError
from snp_engine.statistics import Moments


def _fail(self: Moments, group=None) -> None:
    raise SnpError("process 1 could not read its shard (injected)")


def _hang(self: Moments, group=None) -> None:
    time.sleep(3600)


if __name__ == "__main__":
    mode, argv = sys.argv[1], sys.argv[2:]
    if os.environ.get("RANK") == "1":
        Moments.all_reduce = {"fail": _fail, "hang": _hang}[mode]  # type: ignore[method-assign]
    sys.exit(main(argv))
