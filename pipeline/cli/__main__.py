"""`python -m pipeline.cli`: what the supervisor runs for each component."""
import sys

from pipeline.cli import main

sys.exit(main())
