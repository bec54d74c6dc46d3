"""`python -m ember ...` runs the ember command line."""

from ember.cli import main

raise SystemExit(main())
