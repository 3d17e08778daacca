"""``python -m diffpo_integrations.cli``."""

import sys

from diffpo_integrations.cli import main

sys.exit(main())
