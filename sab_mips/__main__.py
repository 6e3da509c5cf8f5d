"""``python -m sab_mips ...`` is the ``sab-mips`` command (e.g. under ``torchrun -m sab_mips``)."""
import sys

from .cli import main

sys.exit(main())
