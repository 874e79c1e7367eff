"""`python -m qviz` runs the same entry point as the `qviz` console script."""

from qviz.cli import main

raise SystemExit(main())
