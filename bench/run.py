"""``python bench/run.py ...`` is ``python -m bench ...``."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.suite import main  # noqa: E402

sys.exit(main())
