"""``flare-seg evaluate``: arguments -> :func:`flare_seg.evaluation.evaluate.evaluate_folder`, tables, files."""

from __future__ import annotations

import argparse
import json

from flare_seg import atomic
from flare_seg.evaluation.evaluate import (
    evaluate_folder,
    format_detection_table,
    format_table,
    load_folds,
    plot_boxplots,
    summary_document,
    write_csv,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, help="folder of predictions <case>.nii.gz")
    parser.add_argument("--gt", required=True, help="folder of ground-truth label maps <case>.nii.gz")
    parser.add_argument("--protocol", default="flare21", choices=("flare21", "flare22"),
                        help="NSD tolerances: flare21 = 1 mm for every organ; flare22 = liver 5, kidney 3, "
                             "spleen 3, pancreas 5 mm (default: %(default)s)")
    parser.add_argument("--label-map", default=None,
                        help="map ground truth and prediction onto FLARE21 labels: a name (flare21, flare22, "
                             "amos, totalsegmentator) or pairs 'src:dst,src:dst'")
    parser.add_argument("--gt-label-map", default=None, help="as --label-map, for the ground truth only")
    parser.add_argument("--pred-label-map", default=None, help="as --label-map, for the predictions only")
    parser.add_argument("--skip-missing", action="store_true",
                        help="skip cases without prediction (as the official script did) instead of scoring "
                             "them as all background")
    parser.add_argument("--csv", default=None, help="write per case and organ scores to this CSV")
    parser.add_argument("--summary-json", default=None, help="write the summary to this JSON file")
    parser.add_argument("--plot", default=None, help="write a box plot per organ (DSC, NSD) to this PNG")
    parser.add_argument("--folds", default=None,
                        help="cross-validation fold file from training ({\"folds\": [[case, ...], ...]}): "
                             "print the per-fold table (Fold-1..k and Average)")
    parser.add_argument("--workers", type=int, default=2, help="threads reading and scoring cases (default: 2)")


def run(args: argparse.Namespace) -> int:
    from flare_seg.labels import parse_label_map

    maps = {name: None if getattr(args, name) is None else parse_label_map(getattr(args, name))
            for name in ("label_map", "gt_label_map", "pred_label_map")}
    folds = load_folds(args.folds) if args.folds else None
    rows = evaluate_folder(args.pred, args.gt, protocol=args.protocol, skip_missing=args.skip_missing,
                           workers=args.workers, **maps)
    document = summary_document(rows, args.protocol, folds)
    if args.csv:
        write_csv(rows, args.csv)
    if args.summary_json:
        atomic.write_text(args.summary_json, json.dumps(document, indent=2, allow_nan=False) + "\n")
    if args.plot:
        plot_boxplots(rows, args.plot)
    cases = document["cases"]
    title = (f"{len(cases['ok']) + len(cases['missing'])} case(s) scored, protocol {args.protocol} "
             f"(NSD tolerance mm: {', '.join(f'{o} {t:g}' for o, t in document['tolerances_mm'].items())}); "
             f"missing {len(cases['missing'])}, skipped {len(cases['skipped'])}, errors {len(cases['error'])}")
    print(title)
    print(format_table([("All cases", document["summary"])]))
    print()
    print(format_detection_table([("All cases", document["summary"])]))
    if folds is not None:
        print()
        print(format_table([(f["fold"], f["summary"]) for f in document["folds"]]))
    return 1 if document["errors"] else 0

