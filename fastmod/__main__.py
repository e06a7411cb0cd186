"""`python -m fastmod ...` runs the `fastmod` command (fastmod.cli)."""
import sys

from fastmod.cli import main

if __name__ == "__main__":
    sys.exit(main())
