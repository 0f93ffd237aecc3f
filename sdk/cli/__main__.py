"""``python -m sdk.cli`` runs `lq`."""

from sdk.cli import main

main(prog_name="lq")
