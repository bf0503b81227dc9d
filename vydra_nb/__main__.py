"""``python -m vydra_nb``: the ``vydra-nb`` command."""

from vydra_nb.cli import main

raise SystemExit(main())
