"""benchmarks/compare_methods.py's rendering: rows gathered from several run folders, each section
named with the settings of the run it came from, and a rerun that replaces only its own generated
sections of the doc."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import compare_methods  # noqa: E402

ORGANS = compare_methods.ORGANS


def _case(dsc: float, far: float) -> dict:
    return {o: {"dsc": dsc, "nsd": dsc + 0.05, "precision": 0.9, "recall": dsc, "far_fp_ml": far} for o in ORGANS}


def _row(dsc: float, far: float) -> dict:
    return {"forward": {"params": 1000, "forward_s": 2.5, "peak_rss_bytes": 3e9}, "gflop": 878.4,
            "trained_params": 100, "train_seconds": 60.0,
            "scores": {"phantoms": [_case(dsc, far), _case(dsc - 0.1, far)], "amos_0018": [_case(dsc, 2 * far)]}}


def test_render_gathers_rows_names_the_settings_and_keeps_the_prose(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "settings.json").write_text(json.dumps({"steps": 1000, "train_phantoms": 8, "heldout_phantoms": 3,
                                                 "crop_zyx": [32, 64, 64], "lr": 0.001, "seed": 0, "spacing_mm": 4.0,
                                                 "local": [4, 16], "spatial_filters": 8, "threads": 2,
                                                 "cpu": "Test CPU"}))
    # rows come back in the table's order (ROWS), whichever folder holds them
    (b / "methods_so_far.json").write_text(json.dumps({"U-Net": _row(0.6, 10.0)}))
    (a / "methods_so_far.json").write_text(json.dumps({"SCN": _row(0.8, 1.5)}))
    partial = {"one organ each | partial-label loss": {"scores": {"phantoms": [_case(0.7, 0)]}}}
    (b / "partial_so_far.json").write_text(json.dumps(partial))
    doc = tmp_path / "comparison.md"
    begin, end = compare_methods.marks("methods")
    doc.write_text(f"# Title\n\nprose before\n\n{begin}\nold tables\n{end}\n\nprose after\n")

    assert compare_methods.main(["--out", str(a), "--render", str(b), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# Title\n\nprose before\n\n")
    # the partial section had no markers yet: appended after the prose, in its own markers
    assert text.index("prose after") < text.index(compare_methods.marks("partial")[0])
    assert "old tables" not in text
    assert "Test CPU" in text and "1000 steps" in text and "crop 32 x 64 x 64" in text
    assert text.index("| SCN |") < text.index("| U-Net |")
    # phantoms: the mean over the two cases (0.80, 0.70) -> 0.75; far FP summed over organs and cases
    scn = next(line for line in text.splitlines() if line.startswith("| SCN |") and "far" not in line
               and "878.4" not in line)
    assert scn.split(" | ")[1].startswith("0.75 / 0.80 / 0.90 / 0.75")
    assert scn.rstrip(" |").endswith("12.0")  # 1.5 ml x 4 organs x 2 cases
    assert "| one organ each | partial-label loss | 0.700 | 0.700 | 0.700 | 0.700 | 0.700 |" in text

    # a rerun replaces the generated part again, once
    assert compare_methods.main(["--out", str(a), "--render", str(b), "--doc", str(doc)]) == 0
    assert doc.read_text() == text


def test_a_doc_without_markers_gets_them():
    begin, end = compare_methods.marks("partial")
    assert compare_methods.into_doc("", "T", begin, end) == f"{begin}\nT\n{end}\n"
    assert compare_methods.into_doc("# Doc\n", "T", begin, end) == f"# Doc\n\n{begin}\nT\n{end}\n"


@dataclasses.dataclass
class _Case:
    """A training phantom as far as partial_cases, score_training and pseudo_labelled read one."""

    image_hu: np.ndarray
    labels: np.ndarray
    spacing_mm: tuple = (2.0, 2.0, 2.0)
    annotated: tuple | None = None
    pseudo: np.ndarray | None = None
    weight: float = 1.0
    roi: tuple | None = None


def _settings(steps: int) -> dict:
    return {"steps": steps, "train_phantoms": 8, "heldout_phantoms": 3, "crop_zyx": [32, 64, 64], "lr": 0.001,
            "seed": 0, "spacing_mm": 4.0, "local": [4, 16], "spatial_filters": 8, "threads": 1, "cpu": "Test CPU"}


def test_each_section_names_its_own_run_and_others_are_left_alone(tmp_path):
    """A longer partial-label run and an idle-machine forward run replace their sections; the
    methods section of the earlier run stays as it was, and each section says how it was measured."""
    methods_run, partial_run, forward_run = tmp_path / "m", tmp_path / "p", tmp_path / "f"
    for folder in (methods_run, partial_run, forward_run):
        folder.mkdir()
    (methods_run / "settings.json").write_text(json.dumps(_settings(1000)))
    (methods_run / "methods_so_far.json").write_text(json.dumps({"SCN": _row(0.8, 1.5)}))
    (partial_run / "settings.json").write_text(json.dumps(_settings(3000)))
    full, partial = compare_methods.PARTIAL_ROWS["full"], compare_methods.PARTIAL_ROWS["partial"]
    (partial_run / "partial_so_far.json").write_text(json.dumps(  # stored in the order they were run
        {"one organ each | partial-label loss": {"scores": {"phantoms": [_case(0.6, 0)]}},
         partial: {"scores": {"phantoms": [_case(0.5, 0)]}}, full: {"scores": {"phantoms": [_case(0.8, 0)]}}}))
    doc = tmp_path / "comparison.md"
    assert compare_methods.main(["--out", str(methods_run), "--render", "--doc", str(doc)]) == 0
    methods_part = doc.read_text()
    assert "1000 steps" in methods_part and "Partial labels" not in methods_part

    forward = {"settings": {"threads": 2, "cpu": "Idle CPU", "machine": "x86_64"},
               "rows": {"U-Net": {"forward": {"params": 637573, "forward_s": 4.25, "peak_rss_bytes": 3.5e9},
                                  "gflop": 860.8},
                        "SCN": {"forward": {"params": 1270090, "forward_s": 5.5, "peak_rss_bytes": 4.0e9},
                                "gflop": 878.4}}}
    (forward_run / "forward.json").write_text(json.dumps(forward))
    assert compare_methods.main(["--out", str(partial_run), "--render", str(forward_run), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith(methods_part.rstrip("\n"))  # the methods section is untouched
    partial_name = partial
    partial = text.split(compare_methods.marks("partial")[0])[1]
    assert "3000 steps" in partial and "| one organ each | partial-label loss | 0.600 |" in partial
    assert partial.index(f"| {full} |") < partial.index(f"| {partial_name} |") < partial.index("| one organ each |")
    fwd = text.split(compare_methods.marks("forward")[0])[1].split(compare_methods.marks("forward")[1])[0]
    assert "Idle CPU (2 threads)" in fwd and "steps" not in fwd
    scn, unet = "| SCN | 1,270,090 | 878.4 | 5.50 | 4.00 |", "| U-Net | 637,573 | 860.8 | 4.25 | 3.50 |"
    assert fwd.index(scn) < fwd.index(unet)  # the table's order, not the file's


def test_augmented_rows_are_named_so_and_sit_after_the_plain_ones(tmp_path):
    """``--augment`` turns the training augmentation on; its partial rows carry ", augmented" (the
    fully labelled one is then no longer the methods table's SCN row), and rendered beside a plain run
    they follow the plain rows, with a line saying what the mark means."""
    assert compare_methods.train_config(compare_methods.parse_args([])).augment.enabled is False
    args = compare_methods.parse_args(["--augment"])
    assert compare_methods.train_config(args).augment.enabled is True
    assert compare_methods.settings(args)["augment"] is True
    full_aug = compare_methods.partial_row_name("full", True)
    assert full_aug == "all four organs labelled | standard loss, augmented"
    hybrid_aug = compare_methods.partial_row_name("hybrid", True)
    assert hybrid_aug == compare_methods.PARTIAL_ROWS["hybrid"] + ", augmented"
    assert compare_methods.partial_row_name("hybrid", False) == compare_methods.PARTIAL_ROWS["hybrid"]

    plain, augmented = tmp_path / "plain", tmp_path / "aug"
    plain.mkdir(), augmented.mkdir()
    (plain / "settings.json").write_text(json.dumps(_settings(3000)))
    (augmented / "settings.json").write_text(json.dumps({**_settings(3000), "augment": True, "cpu": "Other CPU"}))
    (augmented / "partial_so_far.json").write_text(json.dumps(
        {hybrid_aug: {"scores": {"phantoms": [_case(0.65, 0)]}}, full_aug: {"scores": {"phantoms": [_case(0.7, 0)]}}}))
    (plain / "partial_so_far.json").write_text(json.dumps(
        {compare_methods.PARTIAL_ROWS["full"]: {"scores": {"phantoms": [_case(0.75, 0)]}}}))
    doc = tmp_path / "comparison.md"
    assert compare_methods.main(["--out", str(plain), "--render", str(augmented), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert "augmentation off; no gradient clipping; one-organ sets by phantom index" in text
    assert "Rows named *augmented*" in text
    assert "(`--augment`); rows marked ¹ trained on Other CPU; every other" in text
    assert text.index("| all four organs labelled | standard loss (= the SCN row) | 0.750 |") \
        < text.index(f"| {full_aug} ¹ | 0.700 |") < text.index(f"| {hybrid_aug} ¹ | 0.650 |")
    # the augmented run on its own says so in its settings line, and needs no extra line
    assert compare_methods.main(["--out", str(augmented), "--render", "--doc", str(tmp_path / "a.md")]) == 0
    alone = (tmp_path / "a.md").read_text()
    assert "augmentation on; no gradient clipping;" in alone and "Rows named" not in alone


def test_clipped_rows_are_named_so_and_sit_after_the_unclipped_ones(tmp_path):
    """``--clipnorm`` reaches the training config and the stored settings; its rows say the norm in
    their names (a clipped fully labelled row is not the methods table's SCN row), the settings line
    names it, and rendered beside an unclipped run they follow its rows with a line saying what the
    name means. Runs stored before the flag (no ``clipnorm`` key) read as unclipped."""
    assert compare_methods.train_config(compare_methods.parse_args([])).clipnorm is None
    args = compare_methods.parse_args(["--clipnorm", "1"])
    assert compare_methods.train_config(args).clipnorm == 1.0
    assert compare_methods.settings(args)["clipnorm"] == 1.0
    full_clip = compare_methods.partial_row_name("full", False, 1.0)
    assert full_clip == "all four organs labelled | standard loss, clipnorm 1"
    box_clip = compare_methods.partial_row_name("self_box", False, 1.0)
    assert box_clip == compare_methods.PARTIAL_ROWS["self_box"] + ", clipnorm 1"
    assert compare_methods.partial_row_name("hybrid", True, 0.5) == \
        compare_methods.PARTIAL_ROWS["hybrid"] + ", augmented, clipnorm 0.5"

    plain, clipped = tmp_path / "plain", tmp_path / "clip"
    plain.mkdir(), clipped.mkdir()
    (plain / "settings.json").write_text(json.dumps(_settings(3000)))  # no clipnorm key: stored before the flag
    (clipped / "settings.json").write_text(json.dumps({**_settings(6000), "clipnorm": 1.0}))
    (clipped / "partial_so_far.json").write_text(json.dumps(
        {box_clip: {"scores": {"phantoms": [_case(0.66, 0)]}}, full_clip: {"scores": {"phantoms": [_case(0.74, 0)]}}}))
    (plain / "partial_so_far.json").write_text(json.dumps(
        {compare_methods.PARTIAL_ROWS["self_box"]: {"scores": {"phantoms": [_case(0.57, 0)]}},
         compare_methods.PARTIAL_ROWS["full"]: {"scores": {"phantoms": [_case(0.71, 0)]}}}))
    doc = tmp_path / "comparison.md"
    assert compare_methods.main(["--out", str(plain), "--render", str(clipped), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert "augmentation off; no gradient clipping; one-organ sets by phantom index" in text
    assert "Rows named *clipnorm 1* trained with each weight's gradient clipped to norm 1 (`--clipnorm`); " \
        "rows named *6,000 steps* trained for 6,000 steps; every other setting as above." in text
    rows = [f"| {compare_methods.PARTIAL_ROWS['full']} | 0.710 |",
            f"| {compare_methods.PARTIAL_ROWS['self_box']} | 0.570 |",
            f"| {full_clip}, 6,000 steps | 0.740 |", f"| {box_clip}, 6,000 steps | 0.660 |"]
    assert all(row in text for row in rows), text
    assert [text.index(row) for row in rows] == sorted(text.index(row) for row in rows)
    # the clipped run on its own names the norm in its settings line and needs no extra line
    assert compare_methods.main(["--out", str(clipped), "--render", "--doc", str(tmp_path / "c.md")]) == 0
    alone = (tmp_path / "c.md").read_text()
    assert "each weight's gradient clipped to norm 1;" in alone and "Rows named" not in alone


def test_rows_of_longer_runs_and_reruns_keep_their_own_names(tmp_path):
    """Rendered beside the 3,000-step rows, a 10,000-step run's rows say their steps, and a row trained
    again under the same name and steps (another CPU) is marked with its folder: no row overwrites
    another, and the settings line says what the marks mean."""
    hybrid_aug = compare_methods.partial_row_name("hybrid", True)
    plain, short, long, again = (tmp_path / n for n in ("plain", "aug3k", "aug10k", "zen4"))
    for folder, extra in ((plain, {}), (short, {"augment": True}),
                          (long, {"augment": True, "steps": 10000, "cpu": "Third CPU"}), (again, {"cpu": "Other CPU"})):
        folder.mkdir()
        (folder / "settings.json").write_text(json.dumps({**_settings(3000), **extra}))
    hybrid = compare_methods.PARTIAL_ROWS["hybrid"]
    (plain / "partial_so_far.json").write_text(json.dumps({hybrid: {"scores": {"phantoms": [_case(0.49, 0)]}}}))
    (short / "partial_so_far.json").write_text(json.dumps({hybrid_aug: {"scores": {"phantoms": [_case(0.19, 0)]}}}))
    (long / "partial_so_far.json").write_text(json.dumps({hybrid_aug: {"scores": {"phantoms": [_case(0.61, 0)]},
                                                                      "train": {"labelled_dsc": 0.7,
                                                                                "unlabelled_dsc": 0.6}}}))
    (again / "partial_so_far.json").write_text(json.dumps({hybrid: {"scores": {"phantoms": [_case(0.45, 0)]}}}))
    doc = tmp_path / "c.md"
    assert compare_methods.main(["--out", str(plain), "--render", str(short), str(long), str(again),
                                 "--doc", str(doc)]) == 0
    text = doc.read_text()
    for line in (f"| {hybrid} | 0.490 |", f"| {hybrid_aug} | 0.190 |", f"| {hybrid_aug}, 10,000 steps ² | 0.610 |",
                 f"| {hybrid} [zen4] ¹ | 0.450 |", f"| {hybrid_aug}, 10,000 steps ² | 0.700 | 0.600 |"):
        assert line in text, line
    assert "rows named *10,000 steps* trained for 10,000 steps" in text
    assert "a row marked *[folder]* is the row of that name trained again" in text
    assert "rows marked ¹ trained on Other CPU; rows marked ² trained on Third CPU; every other setting as " \
        "above." in text  # each row says which CPU it came from
    assert text.count(" ¹ |") == 1
    assert compare_methods.distinct_row_name("x", {"steps": 3000}, {"steps": 3000}, [], "f") == "x"
    full = compare_methods.PARTIAL_ROWS["full"]
    assert compare_methods.distinct_row_name(full, {"steps": 750}, {"steps": 3000}, [], "f") == \
        "all four organs labelled | standard loss, 750 steps"
    assert compare_methods.distinct_row_name("x", {"steps": 3000, "heldout_phantoms": 16},
                                             {"steps": 3000, "heldout_phantoms": 3}, [], "f") == "x, 16 held out"
    line = compare_methods._other_settings_md({"x, 16 held out": {"settings": {"heldout_phantoms": 16}}},
                                              {"heldout_phantoms": 3}, {})
    assert line[0].startswith("Rows named *16 held out* scored on 16 held-out phantoms")


def test_score_train_splits_the_labelled_organ_from_the_unknown_ones(monkeypatch):
    """A model that learned which organ each training phantom labels (finds it, calls the others
    background) scores 1 / 0; one that learned the organs scores 1 / 1."""
    labels = np.zeros((12, 12, 16), np.uint8)
    for organ in range(1, 5):  # four 4 x 4 x 3 blocks, one per organ
        labels[4:8, 4:8, 4 * organ - 4:4 * organ - 1] = organ
    cases = compare_methods.partial_cases([_Case(np.full(labels.shape, float(i)), labels) for i in range(4)],
                                          split="by_index")
    assert [c.annotated for c in cases] == [(1,), (2,), (3,), (4,)]

    class Segmenter:
        def __init__(self, memorise):
            self.memorise = memorise

        def segment(self, image, geometry):
            case = cases[int(image.flat[0])]
            keep = np.isin(case.labels, case.annotated) if self.memorise else case.labels > 0
            return type("Result", (), {"labels": np.where(keep, case.labels, 0).astype(np.uint8)})

    for memorise, expected in ((True, (1.0, 0.0)), (False, (1.0, 1.0))):
        monkeypatch.setattr(compare_methods, "segmenter_for", lambda run, m=memorise: Segmenter(m))
        got = compare_methods.score_training(Path("unused"), cases)
        assert (got["labelled_dsc"], got["unlabelled_dsc"]) == expected and got["cases"] == 4

    row = {"scores": {"phantoms": [_case(0.5, 0)]}, "train": {"labelled_dsc": 0.91, "unlabelled_dsc": 0.12}}
    text = "\n".join(compare_methods._partial_md({"one organ each | partial-label loss": row}))
    assert "| one organ each | partial-label loss | 0.910 | 0.120 |" in text
    assert "unlabelled organs DSC" not in "\n".join(compare_methods._partial_md({"x | y": {"scores": row["scores"]}}))


def test_a_row_cut_short_resumes_from_its_checkpoint(tmp_path):
    """With ``--checkpoint-every`` a row stopped part way continues where its checkpoint is when the
    command runs again, instead of being taken as trained; a finished row is reused."""
    from dataclasses import replace

    from conftest import blob_case, tiny_configs

    from flare_seg.training.loop import RunPaths, checkpoint_step, find_checkpoint

    _, seg = tiny_configs()
    seg = replace(seg, preprocess=replace(seg.preprocess, grid=replace(seg.preprocess.grid, spacing_mm=4.0)))
    run, blobs = tmp_path / "row", [blob_case(0)]
    step = lambda: checkpoint_step(find_checkpoint(RunPaths(run)))  # noqa: E731
    common = ["--crop", "32", "32", "32", "--checkpoint-every", "1"]
    compare_methods.train_row(run, seg, blobs[:1], compare_methods.parse_args(["--steps", "1", *common]))
    assert step() == 1  # as a run killed after its first checkpoint leaves it
    first = float((run / "train_seconds.txt").read_text())
    compare_methods.train_row(run, seg, blobs[:1], compare_methods.parse_args(["--steps", "2", *common]))
    assert step() == 2 and float((run / "train_seconds.txt").read_text()) > first
    rows = list(__import__("csv").DictReader(open(run / "train_log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2]
    weights = (run / "model.weights.h5").read_bytes()
    compare_methods.train_row(run, seg, blobs[:1], compare_methods.parse_args(["--steps", "2", *common]))
    assert (run / "model.weights.h5").read_bytes() == weights  # finished: reused, not trained again


def test_the_balanced_split_labels_each_organ_in_both_phantom_kinds(tmp_path):
    """``synthetic_cases`` alternates parametric (even index) and AMOS-map (odd) phantoms. The
    balanced split gives every organ to as many phantoms of each kind; the split of the runs stored
    before it gave the liver and spleen to parametric phantoms only and the kidney and pancreas to
    AMOS-map ones. Rendered beside each other, the one-organ rows of the other split say which
    split they trained on; the fully labelled rows (no split) do not, and rows of another number of
    phantoms say how many."""

    from flare_seg.training.synthetic import synthetic_cases

    for n in (8, 32):
        for organ in range(1, 5):
            kinds = [i % 2 for i in range(n) if compare_methods.split_organ(i) == organ]
            assert kinds.count(0) == kinds.count(1) == n // 8, (n, organ, kinds)
    old = {organ: {i % 2 for i in range(8) if compare_methods.split_organ(i, "by_index") == organ}
           for organ in range(1, 5)}
    assert old == {1: {0}, 2: {1}, 3: {0}, 4: {1}}
    with pytest.raises(ValueError, match="unknown split"):
        compare_methods.split_organ(0, "random")
    import inspect  # the rule the split relies on is the generator's
    assert "i % 2 == 1 and amos is not None" in inspect.getsource(synthetic_cases)

    cases = [_Case(np.zeros((2, 2, 2)), np.zeros((2, 2, 2), np.uint8)) for _ in range(8)]
    assert [c.annotated for c in compare_methods.partial_cases(cases)] == \
        [(1,), (1,), (2,), (2,), (3,), (3,), (4,), (4,)]
    args = compare_methods.parse_args(["--split", "by_index"])
    assert compare_methods.settings(args)["split"] == "by_index"
    assert compare_methods.settings(compare_methods.parse_args([]))["split"] == "balanced"

    old_run, new_run = tmp_path / "old", tmp_path / "new"
    old_run.mkdir(), new_run.mkdir()
    (old_run / "settings.json").write_text(json.dumps(_settings(3000)))  # no split key: stored before the flag
    (new_run / "settings.json").write_text(json.dumps({**_settings(3000), "split": "balanced",
                                                       "train_phantoms": 32}))
    self_box, full = compare_methods.PARTIAL_ROWS["self_box"], compare_methods.PARTIAL_ROWS["full"]
    for run, dsc in ((old_run, 0.5), (new_run, 0.7)):
        (run / "partial_so_far.json").write_text(json.dumps(
            {self_box: {"scores": {"phantoms": [_case(dsc, 0)]}}, full: {"scores": {"phantoms": [_case(0.8, 0)]}}}))
    doc = tmp_path / "c.md"
    assert compare_methods.main(["--out", str(old_run), "--render", str(new_run), "--doc", str(doc)]) == 0
    text = doc.read_text()
    bare = full.replace(compare_methods.SCN_ROW, "")
    for line in (f"| {self_box} | 0.500 |", f"| {self_box}, 32 phantoms, balanced sets | 0.700 |",
                 f"| {bare}, 32 phantoms | 0.800 |"):
        assert line in text, line
    assert "one-organ sets by phantom index (phantom i labels organ i % 4 + 1" in text
    assert "Rows named *32 phantoms* trained on 32 phantoms; rows named *balanced sets* trained on one-organ " \
        "sets balanced over the phantom kinds" in text
    assert compare_methods.main(["--out", str(new_run), "--render", str(old_run), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert f"| {self_box}, 8 phantoms, sets by index | 0.500 |" in text
    assert "; one-organ sets balanced over the phantom kinds (each organ labelled in as many parametric as " \
        "AMOS-map phantoms)." in text


def test_organ_weights_draw_each_one_organ_set_in_proportion_and_leave_the_full_row_alone(tmp_path, monkeypatch):
    """``--organ-weights``: each one-organ case carries its organ's weight, the sampler draws the sets
    in proportion to them, the fully labelled row trains on the cases as they are, and the weighted
    row's name and the run's settings say so."""
    from flare_seg.training.data import SegSampler

    cases = [_Case(np.zeros((2, 2, 2)), np.ones((2, 2, 2), np.uint8)) for _ in range(8)]
    parts = compare_methods.partial_cases(cases, organ_weights=(0.5, 1.0, 1.0, 1.5))
    assert [(c.annotated, c.weight) for c in parts] == \
        [((1,), 0.5), ((1,), 0.5), ((2,), 1.0), ((2,), 1.0), ((3,), 1.0), ((3,), 1.0), ((4,), 1.5), ((4,), 1.5)]
    assert all(c.weight == 1.0 for c in compare_methods.partial_cases(cases))
    sampler = SegSampler.__new__(SegSampler)  # only the case draw is exercised
    sampler.cases = parts
    rng = np.random.default_rng(0)
    draws = np.array([compare_methods.split_organ(sampler._draw_case(rng)) for _ in range(8000)])
    assert np.allclose([np.mean(draws == o) for o in range(1, 5)], [0.125, 0.25, 0.25, 0.375], atol=0.02)

    seen = {}

    def recording(run, config, cases, args, init_weights=None, **changes):
        seen[run.name] = [c.weight for c in cases]
        return run

    monkeypatch.setattr(compare_methods, "train_row", recording)
    monkeypatch.setattr(compare_methods, "segmenter_for", lambda run: None)
    monkeypatch.setattr(compare_methods, "evaluate_row", lambda *a, **k: {"phantoms": [_case(0.5, 0)]})
    monkeypatch.setattr(compare_methods, "trained_config", lambda args: None)
    args = compare_methods.parse_args(["--out", str(tmp_path), "--partial-rows", "full", "self_box",
                                       "--organ-weights", "0.5", "1", "1", "1.5"])
    rows = compare_methods.run_partial(args, cases, [], tmp_path / "full_run")
    assert seen == {"partial_self_box": [0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 1.5, 1.5]}  # the full run is given, not trained
    weighted = compare_methods.PARTIAL_ROWS["self_box"] + ", sets drawn 0.5 / 1 / 1 / 1.5"
    assert set(rows) == {compare_methods.PARTIAL_ROWS["full"], weighted}
    assert compare_methods.settings(args)["organ_weights"] == [0.5, 1.0, 1.0, 1.5]
    assert "organ_weights" not in compare_methods.settings(compare_methods.parse_args([]))
    for bad in (["0", "0", "0", "0"], ["1", "-1", "1", "1"]):
        with pytest.raises(SystemExit):
            compare_methods.parse_args(["--organ-weights", *bad])


def test_pseudo_labels_fill_only_the_unknown_organs_on_unlabelled_voxels():
    """A one-organ case's pseudo-labelled copy keeps its annotated organ exactly as labelled, takes
    the prediction for the organs it leaves unknown on label-0 voxels only, and is then fully
    annotated (hand-made prediction: each rule visible in one voxel)."""
    labels = np.zeros((1, 1, 6), np.uint8)
    labels[0, 0] = [1, 1, 2, 3, 0, 0]  # full labels; the case annotates the liver (1) only
    predicted = np.array([[[1, 3, 2, 0, 1, 4]]], np.uint8)

    class Segmenter:
        def segment(self, image, geometry):
            return type("Result", (), {"labels": predicted})

    (out,) = compare_methods.pseudo_labelled([_Case(np.zeros(labels.shape), labels, annotated=(1,))], Segmenter())
    # liver kept where labelled even if predicted else; kidney predicted on an unknown organ's voxel
    # taken; nothing predicted on the spleen's: background; liver predicted off its labels: background
    assert out.labels[0, 0].tolist() == [1, 1, 2, 0, 0, 4] and out.annotated is None


def _two_rounds(row, tmp_path, monkeypatch, seen):
    """Run a two-round row (``pseudo_label_row`` / ``confident_label_row``) for 2 steps on two blob
    cases, its round-1 model replaced by one that finds every organ (the pseudo-labels are the full
    labels), recording each ``train_row`` call as ``(run, [seen(case)], init_weights, changes)``."""
    from dataclasses import replace

    from conftest import blob_case, tiny_configs

    _, seg = tiny_configs()
    seg = replace(seg, preprocess=replace(seg.preprocess, grid=replace(seg.preprocess.grid, spacing_mm=4.0)))
    parts = compare_methods.partial_cases([blob_case(0), blob_case(1)], all_organs_box=True)
    calls, real_train_row = [], compare_methods.train_row

    def recording(run, config, cases, args, init_weights=None, **changes):
        calls.append((run, [seen(c) for c in cases], init_weights, changes))
        return real_train_row(run, config, cases, args, init_weights=init_weights, **changes)

    class Truth:
        def segment(self, image, geometry):
            return type("Result", (), {"labels": next(c for c in parts if c.image_hu is image).labels})

    monkeypatch.setattr(compare_methods, "train_row", recording)
    monkeypatch.setattr(compare_methods, "segmenter_for", lambda run: Truth())
    args = compare_methods.parse_args(["--steps", "2", "--crop", "32", "32", "32", "--out", str(tmp_path)])
    run, extra = row(args, seg, parts)
    return run, extra, calls, parts


def test_the_pseudo_label_row_trains_self_then_from_its_weights_on_its_own_pseudo_labels(tmp_path, monkeypatch):
    """``self_box_pseudo``: round 1 trains half the steps in ``self`` mode on the one-organ cases,
    round 2 starts from round 1's EMA weights and trains the rest on fully annotated copies whose
    unknown organs the round-1 model filled in; the row keeps the pseudo-labels' quality."""
    run, extra, (first, second), parts = _two_rounds(compare_methods.pseudo_label_row, tmp_path, monkeypatch,
                                                     lambda c: (c.annotated, c.labels.copy()))
    assert first[0].name == "round1" and first[3] == {"steps": 1, "validate_every": 1, "partial_mode": "self"}
    assert [a for a, _ in first[1]] == [(1,), (1,)] and first[2] is None
    assert run == second[0] and second[0].name == "round2" and second[2] == first[0] / "model.weights.h5"
    assert second[3] == {"steps": 1, "validate_every": 1}
    assert all(a is None and np.array_equal(lab, c.labels) for (a, lab), c in zip(second[1], parts, strict=True))
    assert extra == {"pseudo_labels": {"labelled_dsc": 1.0, "unlabelled_dsc": 1.0, "cases": 2}}
    assert (run / "model.weights.h5").exists() and json.loads((run / "train_config.json").read_text())["steps"] == 1


def test_confident_pseudo_labels_leave_a_band_around_each_predicted_boundary_unsure():
    """Hand-made 1 mm row of 16 voxels, margin 2 mm, the kidney (2) the only unknown organ: predicted
    at x 4-8, its core (x 6, 3 mm deep) is kidney, voxels within 2 mm of the predicted boundary on
    either side are unsure, the liver predicted off its labels (x 11) is unsure, and voxels farther
    than 2 mm from the predicted kidney are "none" -- also x 13, a piece of true kidney the model
    missed (what ``organ_called_none`` counts). A second case whose prediction misses an unknown
    organ entirely keeps only the kidney's core."""
    from flare_seg.training.partial import PSEUDO_UNSURE as U

    labels = np.array([[[1, 1, 1, 0, 0, 2, 2, 2, 2, 2, 0, 0, 0, 2, 0, 0]]], np.uint8)
    predicted = np.array([[[1, 1, 0, 0, 2, 2, 2, 2, 2, 0, 0, 1, 0, 0, 0, 0]]], np.uint8)

    class Segmenter:
        def segment(self, image, geometry):
            return type("Result", (), {"labels": predicted})

    cases = [_Case(np.zeros(labels.shape), labels, (1.0, 1.0, 1.0), annotated=(1, 3, 4)),
             _Case(np.zeros(labels.shape), labels, (1.0, 1.0, 1.0), annotated=(1,))]
    (first, second), quality = compare_methods.confident_pseudo_labelled(cases, Segmenter(), margin_mm=2.0)
    assert first.pseudo[0, 0].tolist() == [0, 0, U, U, U, U, 2, U, U, U, U, U, 0, 0, 0, 0]
    assert second.pseudo[0, 0].tolist() == [U] * 6 + [2] + [U] * 9
    assert np.array_equal(first.labels, labels) and first.annotated == (1, 3, 4)
    # voxels off the annotated organs: 13 + 13; answered 5 (x 6, 12-15) + 1; named 2, both right;
    # true unknown organs 6 + 6
    assert quality == {"margin_mm": 2.0, "confident": pytest.approx(6 / 26), "organ_precision": 1.0,
                       "organ_recall": pytest.approx(2 / 12), "organ_called_none": pytest.approx(1 / 12),
                       "cases": 2}


def test_the_confident_label_row_trains_self_then_self_again_with_its_pseudo_labels(tmp_path, monkeypatch):
    """``self_box_confident``: round 1 is ``self`` for half the steps, round 2 starts from its EMA
    weights and trains the rest in ``self`` mode on the same one-organ cases, now carrying pseudo-labels."""
    run, extra, (first, second), _ = _two_rounds(compare_methods.confident_label_row, tmp_path, monkeypatch,
                                                 lambda c: (c.annotated, c.pseudo))
    assert first[0].name == "round1" and first[3] == {"steps": 1, "validate_every": 1, "partial_mode": "self"}
    assert all(p is None for _, p in first[1]) and first[2] is None
    assert second[0] == run and run.name == "round2_8mm" and second[2] == first[0] / "model.weights.h5"
    assert second[3] == {"steps": 1, "validate_every": 1, "partial_mode": "self"}
    assert [a for a, _ in second[1]] == [(1,), (1,)] and all(p is not None for _, p in second[1])
    assert extra["pseudo_labels"]["organ_precision"] == 1.0 and extra["pseudo_labels"]["organ_called_none"] == 0.0
    assert (run / "model.weights.h5").exists()


def test_confident_rows_of_two_bands_render_apart(tmp_path):
    """Two ``self_box_confident`` runs that differ only in ``--pseudo-margin-mm`` keep one row each,
    named by their band; other rows' names are untouched."""
    name = compare_methods.partial_row_name("self_box_confident", False, 1.0)
    folders = []
    for margin, dsc in ((8.0, 0.7), (4.0, 0.6)):
        folder = tmp_path / f"m{margin:g}"
        folder.mkdir()
        (folder / "settings.json").write_text(json.dumps({**_settings(12000), "clipnorm": 1.0}))
        (folder / "partial_so_far.json").write_text(json.dumps(
            {name: {"scores": {"phantoms": [_case(dsc, 0)]}, "pseudo_labels": {"margin_mm": margin}}}))
        folders.append(folder)
    doc = tmp_path / "comparison.md"
    assert compare_methods.main(["--out", str(folders[0]), "--render", str(folders[1]), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert f"| {name}, 8 mm band | 0.700 |" in text and f"| {name}, 4 mm band | 0.600 |" in text
    assert compare_methods.banded_name("x", {"pseudo_labels": {"labelled_dsc": 0.4}}) == "x"
    assert compare_methods.banded_name("x, 8 mm band", {"pseudo_labels": {"margin_mm": 8.0}}) == "x, 8 mm band"

def test_paired_gap_to_the_fully_labelled_row_of_the_same_settings():
    """Hand-worked: per-phantom gaps 0.2 and 0.4 give a gap of 0.3 with SE std([0.2, 0.4], ddof=1) /
    sqrt(2) = 0.1; a row of other settings, or scored on other phantoms, gets no partner."""
    full = compare_methods.PARTIAL_ROWS["full"]
    settings = {"steps": 3000, "train_phantoms": 32, "heldout_phantoms": 2, "split": "by_index"}
    rows = {full: {"scores": {"phantoms": [_case(0.9, 0), _case(0.8, 0)]}, "settings": settings},
            "one organ | self": {"scores": {"phantoms": [_case(0.7, 0), _case(0.4, 0)]},
                                 "settings": {**settings, "split": "balanced"}},  # the split does not matter
            "one organ | self, 6,000 steps": {"scores": {"phantoms": [_case(0.7, 0), _case(0.4, 0)]},
                                              "settings": {**settings, "steps": 6000}},
            "one organ | other phantoms": {"scores": {"phantoms": [_case(0.7, 0)]}, "settings": settings}}
    gaps = compare_methods.paired_gaps(rows)
    assert list(gaps) == ["one organ | self"]
    got = gaps["one organ | self"]
    assert got["phantoms"] == 2 and np.isclose(got["full"], 0.85) and np.isclose(got["row"], 0.55)
    assert np.isclose(got["gap"], 0.3) and np.isclose(got["se"], 0.1)
    text = "\n".join(compare_methods._partial_md(rows))
    assert "| one organ | self | 2 | 0.850 | 0.550 | 0.300 | 0.100 |" in text
