"""``flare-seg`` subcommands: one thin module each over a library function (:mod:`flare_seg.cli.main` dispatches)."""
