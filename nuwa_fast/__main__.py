"""`python -m nuwa_fast ...` is the `nuwa-fast` command."""
import sys

from .cli import main

sys.exit(main())
