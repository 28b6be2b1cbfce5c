"""`python -m slmlab ...` — same as the `slmlab` command (and what torchrun/accelerate launch run)."""

from slmlab.cli import main

main()
