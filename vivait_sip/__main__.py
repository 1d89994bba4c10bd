"""`python -m vivait_sip` is the `vivait-sip` command."""

import sys

from .cli import main

sys.exit(main())
