"""``python -m mskseg`` = the ``mskseg`` command."""
import sys

from .cli import main

sys.exit(main())
