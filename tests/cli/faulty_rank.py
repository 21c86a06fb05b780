"""``snp`` under torchrun with process 1 changed: failing, hanging, or refusing to order units.

    torchrun --nproc_per_node 2 -m tests.cli.faulty_rank fail|hang|order-on-0 ARGV... --distributed

Process 1 raises a user error (``fail``) or sleeps far past the collective timeout (``hang``)
where it would sum its statistics, or fails if it ever computes an ordering (``order-on-0``:
process 0 alone should, and broadcast it); every other process runs ``snp`` unchanged. The
distributed command-line tests start it.
"""

from __future__ import annotations

import os
import sys
import time

from snp_engine import analysis
from snp_engine.cli import main
from snp_engine.errors import SnpError
from snp_engine.statistics import Moments


def _fail(self: Moments, group=None) -> None:
    raise SnpError("process 1 could not read its shard (injected)")


def _hang(self: Moments, group=None) -> None:
    time.sleep(3600)


def _refuse_to_order(*_args, **_kwargs):
    raise SnpError("process 1 computed an ordering")


if __name__ == "__main__":
    mode, argv = sys.argv[1], sys.argv[2:]
    if os.environ.get("RANK") == "1":
        if mode == "order-on-0":
            analysis._ordered = _refuse_to_order  # type: ignore[assignment]
        else:
            Moments.all_reduce = {"fail": _fail, "hang": _hang}[mode]  # type: ignore[method-assign]
    sys.exit(main(argv))
