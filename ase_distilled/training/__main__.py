"""``torchrun -m ase_distilled.training ...``: ``ase-distilled train`` on every process."""

import sys

from ase_distilled.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
