"""``python -m snp_engine.cli`` (e.g. under torchrun) runs the ``snp`` command."""

from snp_engine.cli import main

raise SystemExit(main())
