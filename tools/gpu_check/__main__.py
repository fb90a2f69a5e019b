"""``python3 -m tools.gpu_check``: see the package's doc."""
import sys

from tools.gpu_check.cli import main

sys.exit(main())
