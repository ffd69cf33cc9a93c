"""`python -m dicomshare`: the same as the `dicomshare` command."""

from dicomshare.cli import main

raise SystemExit(main())
