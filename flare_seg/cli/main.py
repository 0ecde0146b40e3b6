"""``flare-seg`` command line: parse arguments, set up logging, call one library function.

Subcommands live in the modules that implement them, each exposing ``add_arguments(parser)``
and ``run(args) -> int``; those modules keep their heavy imports (TensorFlow, SimpleITK,
matplotlib) inside functions so ``flare-seg --help`` and every subcommand start fast.
Only the CLI modules (``flare_seg/cli/``) print for people, e.g. the predict summary table;
library code logs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from flare_seg import __version__

#: subcommand -> (module implementing it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "predict": ("flare_seg.cli.predict", "segment CT files or folders (FLARE naming, report, QC)"),
    "evaluate": ("flare_seg.cli.evaluate", "score predictions against ground truth (DSC, NSD; FLARE21/22 rules)"),
    "benchmark-run": ("flare_seg.cli.benchmark_run", "run a command one case at a time, timing it and sampling memory"),
    "train": ("flare_seg.cli.train", "train the localizer or the SCN (EMA weights, resumable)"),
    "phantom": ("flare_seg.cli.phantom", "write synthetic abdominal CT phantoms with FLARE labels"),
    "export": ("flare_seg.cli.export", "export the networks to ONNX / OpenVINO for the lean CPU engines"),
}


def setup_logging(verbosity: int) -> None:
    """-q: warnings only, default: info, -v: debug. Third-party chatter stays at warning."""
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr, force=True)
    for noisy in ("tensorflow", "absl", "matplotlib", "PIL", "h5py", "carbontracker", "highdicom", "distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the subcommand named in ``argv`` gets its module imported (fast start-up)."""
    parser = argparse.ArgumentParser(
        prog="flare-seg",
        description="Fast, low-memory abdominal organ segmentation in CT (liver, kidney, spleen, pancreas). "
        "Research software, not a medical device.",
    )
    parser.add_argument("--version", action="version", version=f"flare-seg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in (argv or []) if not a.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("-q", "--quiet", action="store_const", const=-1, dest="verbosity", default=0,
                       help="only warnings and errors")
        p.add_argument("-v", "--verbose", action="store_const", const=1, dest="verbosity",
                       help="debug logging")
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    setup_logging(args.verbosity)
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, PermissionError) as err:
        logging.getLogger("flare_seg").error("%s", err)
        return 2
    except KeyboardInterrupt:
        logging.getLogger("flare_seg").error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
