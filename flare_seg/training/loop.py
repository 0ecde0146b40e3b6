"""The training loop: one long ``fit()`` with callbacks, EMA weights, atomic checkpoints, resume.

Backend-neutral (TensorFlow, JAX or PyTorch under Keras 3): data come from a ``PyDataset``,
the EMA lives in the optimizer (:class:`flare_seg.training.ema.AdamEMA`), and validation and checkpoints
are callbacks. Keras copies the EMA weights into the model when ``fit()`` ends; during the run,
callbacks swap them in and out explicitly. With ``distribute`` (:mod:`flare_seg.training.distribute`)
the model lives on several devices and each global batch is split between them; nothing else changes.

A run folder holds: ``config.json`` (model, loadable by inference), ``train_config.json``,
``model.weights.h5`` (EMA weights, updated at every checkpoint), ``best.weights.h5`` (the EMA
weights of the best selection score so far, with ``best.json``: the mean validation DSC, or with real
validation CTs the rule of :func:`flare_seg.training.real_val.selection_score`), ``checkpoint/`` (raw and EMA
weights, optimizer state, dropout seed states, step), ``train_log.csv``, ``curves.png``,
``carbon.json`` and, for cross-validation, ``folds.json``.

``kill <pid>`` (SIGTERM) or Ctrl-C stops a run after the step in progress, with a checkpoint at
that step (:mod:`flare_seg.training.stopping`); ``--resume`` then continues it exactly.
"""

from __future__ import annotations

import csv
import json
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from flare_seg import __version__
from flare_seg.atomic import atomic_path, copy_file, remove_stale_temporaries
from flare_seg.config import LocalizerConfig, TrainConfig, atomic_write_text, save_config, to_dict
from flare_seg.labels import NAMES
from flare_seg.preprocess import fit_size
from flare_seg.training.data import TrainCase
from flare_seg.training.stopping import StopRequest

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"
WEIGHTS = "model.weights.h5"


@dataclass
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def train_config(self) -> Path:
        return self.root / "train_config.json"

    @property
    def weights(self) -> Path:
        return self.root / WEIGHTS

    @property
    def checkpoint(self) -> Path:
        return self.root / CHECKPOINT

    @property
    def best(self) -> Path:
        return self.root / "best.weights.h5"

    @property
    def log_csv(self) -> Path:
        return self.root / "train_log.csv"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"


def make_sampler(model_config, train_config: TrainConfig, cases: list[TrainCase]):
    if hasattr(cases, "make_sampler"):  # a generator pool (flare_seg.training.generated): fresh samples
        return cases.make_sampler(model_config, train_config)
    from flare_seg.training.samplers import make_sampler as sampler_for

    return sampler_for(model_config, train_config, cases)


def output_names(model_config) -> tuple[str, ...]:
    from flare_seg.training.objectives import output_names as names

    return names(model_config)


def compile_model(model, model_config, train_config: TrainConfig):
    """Attach the paper's losses and Adam + EMA (optionally with loss scaling for mixed precision)."""
    import keras

    from flare_seg.training import objectives
    from flare_seg.training.ema import AdamEMA

    optimizer = AdamEMA(
        learning_rate=train_config.learning_rate, beta_1=train_config.beta_1, beta_2=train_config.beta_2,
        ema_momentum=train_config.ema_decay, ema_warmup=train_config.ema_warmup,
        clipnorm=train_config.clipnorm, weight_decay=train_config.weight_decay or None,
    )
    if train_config.mixed_precision:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    loss, weights = objectives.model_losses(model_config, train_config)  # the paper's on full labels
    model.compile(optimizer=optimizer, loss=loss, loss_weights=weights, jit_compile=False)
    optimizer.build(model.trainable_variables)
    return model


# ----------------------------------------------------------------------------- data pipeline


def batch_of(x: np.ndarray) -> np.ndarray:
    """A batch of one: ``(z, y, x)`` -> ``(1, z, y, x, 1)``; ``(z, y, x, c)`` (extra channels) -> ``(1, ..., c)``."""
    return x[None, ..., None] if x.ndim == 3 else x[None]


def make_dataset(sampler, names: tuple[str, ...], start_step: int, num_steps: int, workers: int,
                 batch_size: int = 1, train_config: TrainConfig | None = None):
    """A ``keras.utils.PyDataset`` yielding step ``start_step + i`` as batch ``i``.

    The batch is the *global* one (a distribution strategy splits it over its devices): samples
    ``s * batch_size + j`` of step ``s``, stacked; batch size 1 reads sample ``s`` as it always did.
    The targets per output come from :func:`flare_seg.training.objectives.sample_targets`."""
    import keras

    from flare_seg.training.objectives import sample_targets

    train_config = train_config or TrainConfig()

    class _Samples(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=max(1, workers), use_multiprocessing=False, max_queue_size=4)
            self.sample_seconds = 0.0
            self.samples = 0
            self._lock = threading.Lock()  # worker threads update the counters concurrently

        def __len__(self):
            return num_steps

        def __getitem__(self, index):
            step = start_step + int(index)
            xs, ys = [], []
            for j in range(batch_size):
                t0 = time.perf_counter()
                x, targets = sample_targets(sampler, step * batch_size + j, names, train_config)
                with self._lock:
                    self.sample_seconds += time.perf_counter() - t0
                    self.samples += 1
                xs.append(batch_of(x))
                ys.append(targets)
            return np.concatenate(xs), {name: np.stack([t[name] for t in ys]) for name in ys[0]}

    return _Samples()


# ----------------------------------------------------------------------------- checkpoints


def _seed_variables(model) -> list:
    """Dropout seed-generator states (so a resumed run draws the same dropout masks)."""
    from flare_seg.training.ema import all_layers

    found = []
    for layer in all_layers(model):
        generator = getattr(layer, "seed_generator", None)
        if generator is not None:
            found.append(generator.state)
    return found


class WeightsWriter:
    """Saves a compiled model's weights *without* its optimizer state (Keras' ``save_weights`` of a
    compiled model also stores Adam's moments and the EMA copies: 4x the size of the network)."""

    def __init__(self, model_config):
        from flare_seg.models import build_model

        self.twin = build_model(model_config)

    def save(self, model, path) -> None:
        self.twin.set_weights(model.get_weights())
        self.twin.save_weights(path)


def save_checkpoint(paths: RunPaths, model, step: int, writer: WeightsWriter, extra: dict | None = None) -> None:
    """Write raw + EMA weights, optimizer state, seed states and the step, atomically (folder swap)."""
    from keras import ops

    from flare_seg.training.ema import swap_ema_weights

    with atomic_path(paths.checkpoint) as tmp:  # the whole folder is swapped in at once
        tmp.mkdir()
        writer.save(model, tmp / "raw.weights.h5")
        swap_ema_weights(model, model.optimizer)
        try:
            writer.save(model, tmp / "ema.weights.h5")
        finally:
            swap_ema_weights(model, model.optimizer)
        np.savez(tmp / "optimizer.npz", *[ops.convert_to_numpy(v) for v in model.optimizer.variables])
        np.savez(tmp / "seeds.npz", *[ops.convert_to_numpy(v) for v in _seed_variables(model)])
        state = {"step": int(step), "flare_seg_version": __version__, "time": time.time(), **(extra or {})}
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
    copy_file(paths.checkpoint / "ema.weights.h5", paths.weights)


def find_checkpoint(paths: RunPaths) -> Path | None:
    """The newest complete checkpoint (a crash mid-swap leaves ``.checkpoint.old``)."""
    for candidate in (paths.checkpoint, paths.root / f".{CHECKPOINT}.old"):
        if (candidate / "state.json").exists():
            return candidate
    return None


def load_network_weights(model, path: Path) -> None:
    """Load a weights-only file into a compiled model (its optimizer state comes from elsewhere).

    Keras warns that the file holds no optimizer variables; that is by design here
    (:class:`WeightsWriter`), so the warning is silenced for this call only."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model.load_weights(path)


def load_checkpoint(paths: RunPaths, model) -> int:
    """Restore a run's checkpoint into a compiled ``model``; returns the step it was taken at."""
    folder = find_checkpoint(paths)
    if folder is None:
        raise FileNotFoundError(f"{paths.root}: no checkpoint to resume from")
    load_network_weights(model, folder / "raw.weights.h5")
    with np.load(folder / "optimizer.npz") as saved:
        values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    if len(values) != len(model.optimizer.variables):
        raise ValueError(f"{folder}: optimizer state has {len(values)} variables, model needs "
                         f"{len(model.optimizer.variables)} (different model or optimizer settings?)")
    for var, value in zip(model.optimizer.variables, values, strict=True):
        var.assign(value)
    seeds = _seed_variables(model)
    with np.load(folder / "seeds.npz") as saved:
        if len(saved.files) != len(seeds):
            raise ValueError(f"{folder}: holds {len(saved.files)} dropout seed states, the model has {len(seeds)} "
                             "(different model config?)")
        for var, key in zip(seeds, sorted(saved.files, key=lambda k: int(k[4:])), strict=True):
            var.assign(saved[key])
    return checkpoint_step(folder)


def checkpoint_step(folder: Path) -> int:
    """The step a checkpoint folder (from :func:`find_checkpoint`) was saved at."""
    return int(json.loads((folder / "state.json").read_text())["step"])


# ----------------------------------------------------------------------------- validation and logs


def validate(model, sampler, model_config, num_cases: int) -> dict[str, float]:
    """Mean DSC per label on deterministic (un-augmented) validation samples, on the network grid;
    with a presence head also ``val_presence_acc``, the share of annotated organs it gets right."""
    from flare_seg.evaluation.metrics import dice

    names = output_names(model_config)
    scores: dict[str, list[float]] = {}
    presence: list[float] = []
    for i in range(num_cases):
        drawn = sampler.draw(i, augment_data=False)
        y = drawn.target
        out = model.predict_on_batch(batch_of(drawn.x))
        if "presence" in names:
            presence += _presence_accuracy(drawn, sampler.train.presence_min_ml, out["presence"])
        pred = np.argmax(np.asarray(out[names[0]])[0], axis=-1)
        truth = np.argmax(y, axis=-1)
        if isinstance(model_config, LocalizerConfig):  # a per-organ localizer: foreground = any organ
            pred, truth = (pred > 0).astype(int), (truth > 0).astype(int)
        labels = (1,) if isinstance(model_config, LocalizerConfig) else tuple(range(1, y.shape[-1]))
        for label in labels:
            name = "foreground" if isinstance(model_config, LocalizerConfig) else NAMES[label]
            scores.setdefault(name, []).append(dice(pred == label, truth == label))
    result = {f"val_dsc_{k}": float(np.mean(v)) for k, v in scores.items()}
    if presence:
        result["val_presence_acc"] = float(np.mean(presence))
    return result


def _presence_accuracy(drawn, min_ml: float, logits) -> list[float]:
    """A validation sample's presence accuracy over its annotated organs (none annotated: empty)."""
    from flare_seg.training.presence import presence_accuracy, presence_target

    accuracy = presence_accuracy(presence_target(drawn.target, drawn.voxel_ml, min_ml), np.asarray(logits)[0])
    return [] if accuracy is None else [accuracy]


def mean_validation_dsc(row: dict) -> float | None:
    """Mean of a log row's validation DSC values, or None if the row has no validation."""
    values = [float(v) for k, v in row.items() if k.startswith("val_dsc_") and v not in (None, "")]
    return float(np.mean(values)) if values else None


def _read_log(path: Path, up_to_step: int) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return [row for row in csv.DictReader(fh) if int(row["step"]) <= up_to_step]


def write_log(path: Path, rows: list[dict]) -> None:
    """The training log as CSV (atomically), columns from all rows."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def plot_curves(rows: list[dict], path: Path) -> None:
    """PNG of training loss and validation DSC against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [int(r["step"]) for r in rows]
    fig, (ax_loss, ax_dsc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(steps, [float(r["loss"]) for r in rows], marker=".")
    ax_loss.set(xlabel="step", ylabel="training loss (interval mean)", title="loss")
    keys = sorted({k for row in rows for k in row if k.startswith(("val_dsc_", "real_dsc_"))})
    for key in keys:  # validation rows are a subset of the logged steps
        points = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        if points:
            ax_dsc.plot(*zip(*points, strict=True), marker=".", label=key.removeprefix("val_dsc_"))
    ax_dsc.set(xlabel="step", ylabel="DSC (EMA weights)", ylim=(0, 1), title="validation")
    if ax_dsc.lines:
        ax_dsc.legend()
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------- the run


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    log_rows: list[dict] = field(default_factory=list)
    steps_per_second: float = 0.0
    samples_per_second: float = 0.0
    #: the signal that stopped the run before ``train_config.steps`` (``"SIGTERM"``), else ""
    stopped: str = ""


def interval_means(n0: int, means0: dict[str, float], n1: int, means1: dict[str, float]) -> dict[str, float]:
    """Mean of batches ``n0+1 .. n1`` from Keras' running means after ``n0`` and ``n1`` batches.

    Keras' ``logs`` hold means since ``fit()`` began, not the last batch's value; logging them as
    they are would make a resumed run's curve jump (its mean restarts)."""
    return {k: (n1 * m - n0 * means0.get(k, 0.0)) / max(n1 - n0, 1) for k, m in means1.items()}


def _callbacks(run, paths, model_config, train_config, val_sampler, num_val, dataset, start_step, rows, writer,
               real_cases=None, stop=None):
    import keras

    from flare_seg.training.ema import swap_ema_weights
    from flare_seg.training.real_val import selection_score, validate_real

    class Monitor(keras.callbacks.Callback):
        """Progress, interval loss, validation on EMA weights, checkpoints, CSV and PNG."""

        def __init__(self):
            super().__init__()
            # Keras logs running means since fit() began: see interval_means.
            self.running: dict[str, float] = {}
            self.batches = 0
            self.interval_start: tuple[int, dict[str, float]] = (0, {})
            self.t_interval = time.perf_counter()
            #: the step a stop request (:mod:`flare_seg.training.stopping`) ended the run at
            self.stopped_at: int | None = None

        def on_train_batch_end(self, batch, logs=None):
            step = start_step + batch + 1
            self.running = {key: float(value) for key, value in (logs or {}).items()}
            self.batches = batch + 1
            run.progress(step, logs or {}, dataset)
            checkpoint = step % train_config.checkpoint_every == 0 or step == train_config.steps
            logged = checkpoint or step % train_config.validate_every == 0
            if logged:
                self._log_row(step)
            # read after this step's logging: a signal during its validation stops the run at this step
            stopping = stop is not None and stop.requested and step < train_config.steps
            if stopping and not logged:
                self._log_row(step)
            if checkpoint or stopping:
                save_checkpoint(paths, self.model, step, writer)
                write_log(paths.log_csv, rows)
                plot_curves(rows, paths.curves)
            if stopping:
                self.stopped_at = step
                self.model.stop_training = True

        def _keep_best(self, row):
            """With the EMA weights swapped in: write them to best.weights.h5 when this validation's
            selection score (real CT + phantoms, :func:`flare_seg.training.real_val.selection_score`; the
            mean phantom DSC without real cases) is the best so far, at every validation; a score of 0 counts."""
            score = selection_score(row)
            earlier = [selection_score(r) for r in rows if int(r["step"]) != int(row["step"])]
            if score is None or any(s is not None and s > score for s in earlier):
                return
            with atomic_path(paths.best) as tmp:
                writer.save(self.model, tmp)
            atomic_write_text(paths.root / "best.json", json.dumps(
                {"step": int(row["step"]), "mean_val_dsc": mean_validation_dsc(row), "selection_score": score}))

        def _log_row(self, step):
            elapsed = time.perf_counter() - self.t_interval
            losses = interval_means(*self.interval_start, self.batches, self.running)
            row = {"step": step, **losses,
                   "steps_per_s": (self.batches - self.interval_start[0]) / max(elapsed, 1e-9),
                   "samples_per_s": dataset.samples / max(dataset.sample_seconds, 1e-9)}
            if (val_sampler is not None or real_cases) and step % train_config.validate_every == 0:
                model = self.model
                swap_ema_weights(model, model.optimizer)
                try:
                    if val_sampler is not None:
                        row.update(validate(model, val_sampler, model_config, num_val))
                    if real_cases:  # the real-CT signal (flare_seg.training.real_val)
                        row.update(validate_real(model, model_config, train_config, real_cases))
                    self._keep_best(row)
                finally:
                    swap_ema_weights(model, model.optimizer)
                log.info("step %d: %s", step, ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "step"))
            if rows and int(rows[-1]["step"]) == step:
                rows[-1].update(row)
            else:
                rows.append(row)
            self.interval_start = (self.batches, dict(self.running))
            self.t_interval = time.perf_counter()

    return [Monitor()]


class _Progress:
    """tqdm bar over steps with loss, steps/s and samples/s."""

    def __init__(self, start: int, total: int, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=start, unit="step", disable=not enabled, dynamic_ncols=True)

    def progress(self, step, logs, dataset):
        self.bar.update(1)
        postfix = {"loss": f"{float(logs.get('loss', np.nan)):.4f}"}
        if dataset.samples:
            postfix["samples/s"] = f"{dataset.samples / max(dataset.sample_seconds, 1e-9):.2f}"
        self.bar.set_postfix(postfix, refresh=False)

    def close(self):
        self.bar.close()


def _restored_model(model_config, train_config: TrainConfig, paths: RunPaths, resume: bool, init_weights):
    """The compiled model and its start step: from the checkpoint, from ``init_weights`` or freshly initialised."""
    from flare_seg.models import build_model
    from flare_seg.training.ema import reset_ema_to_weights

    model = compile_model(build_model(model_config), model_config, train_config)
    if resume:
        start_step = load_checkpoint(paths, model)
        log.info("resuming %s at step %d", paths.root, start_step)
        return model, start_step
    if init_weights is not None:
        load_network_weights(model, Path(init_weights))
        reset_ema_to_weights(model)
        log.info("initialised from %s", init_weights)
    return model, 0


def grid_no_smaller_than_crops(model_config, train_config: TrainConfig):
    """``model_config`` with its grid's ``size_min_zyx`` raised to the training crop (``train_size_zyx``,
    rounded up to the grid's multiple, at most ``size_max_zyx``), so validation and inference never
    give the network a grid smaller than any it trained on. A thin scan (a 40 mm slab, a 3-slice
    volume) otherwise got a 32-slice grid where training only ever showed 96: the dr_seg run's real
    slab scored liver 0.38 there and 0.66 on the same input padded to 96 slices."""
    crop = train_config.train_size_zyx
    grid = getattr(getattr(model_config, "preprocess", None), "grid", None)
    if crop is None or grid is None:
        return model_config
    size_min = tuple(fit_size(c, lo, hi, grid.size_multiple)
                     for c, lo, hi in zip(crop, grid.size_min_zyx, grid.size_max_zyx, strict=True))
    if size_min == tuple(grid.size_min_zyx):
        return model_config
    log.info("grid size_min_zyx %s -> %s: no grid smaller than the %s training crops",
             tuple(grid.size_min_zyx), size_min, tuple(crop))
    preprocess = replace(model_config.preprocess, grid=replace(grid, size_min_zyx=size_min))
    return replace(model_config, preprocess=preprocess)


def train(
    model_config,
    train_config: TrainConfig,
    train_cases: list[TrainCase],
    run_dir: str | Path,
    *,
    val_cases: list[TrainCase] | None = None,
    resume: bool = False,
    init_weights: str | Path | None = None,
    progress: bool = True,
    real_cases: list | None = None,
    distribute: str | None = None,
) -> TrainResult:
    """Train ``model_config``'s network on ``train_cases`` into ``run_dir`` (see the module docstring).

    ``distribute``: a :data:`flare_seg.training.distribute.STRATEGIES` name to split each batch
    over the visible devices (None: ``train_config.distribute``; both None: one device). It is
    saved in ``train_config.json`` with the run."""
    import keras

    from flare_seg.training.distribute import make_distribution

    paths = RunPaths(Path(run_dir))
    paths.root.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_temporaries(paths.root):  # of a run killed mid-write
        log.info("removed %s, left by a killed run", stale)
    if resume and find_checkpoint(paths) is None:
        raise FileNotFoundError(f"{paths.root}: --resume given but no checkpoint found")
    if not resume and find_checkpoint(paths) is not None:
        raise ValueError(f"{paths.root}: holds a checkpoint already; use --resume or another folder")
    if distribute is not None:
        train_config = replace(train_config, distribute=distribute)
    distribution = make_distribution(train_config.distribute, train_config)
    model_config = grid_no_smaller_than_crops(model_config, train_config)
    save_config(model_config, paths.config)
    atomic_write_text(paths.train_config, json.dumps(to_dict(train_config), indent=2) + "\n")
    keras.utils.set_random_seed(train_config.seed)
    with distribution.scope():  # variables (network, Adam, EMA) are created on every device
        model, start_step = _restored_model(model_config, train_config, paths, resume, init_weights)
    rows = _read_log(paths.log_csv, start_step)
    remaining = train_config.steps - start_step
    sampler = make_sampler(model_config, train_config, train_cases)
    val_sampler = make_sampler(model_config, train_config, val_cases) if val_cases else None
    result = TrainResult(paths.root, start_step, rows)
    if remaining <= 0:
        log.info("%s: already at step %d of %d", paths.root, start_step, train_config.steps)
        return result
    dataset = make_dataset(sampler, output_names(model_config), start_step, remaining, train_config.workers,
                           train_config.batch_size, train_config)
    run = _Progress(start_step, train_config.steps, progress)
    writer = WeightsWriter(model_config)  # one device: it only copies weights to files
    stop = StopRequest()
    callbacks = _callbacks(run, paths, model_config, train_config, val_sampler,
                           len(val_cases or []), dataset, start_step, rows, writer, real_cases, stop)
    t0 = time.perf_counter()
    try:
        with stop, distribution.scope():
            model.fit(dataset, epochs=1, verbose=0, callbacks=callbacks, shuffle=False)  # order = sample index
    finally:
        run.close()
    elapsed = time.perf_counter() - t0
    stopped_at = callbacks[0].stopped_at
    if stopped_at is not None:  # unfinished: its checkpoint (and model.weights.h5, the EMA weights) hold it
        log.warning("%s: stopped by %s at step %d of %d; checkpoint written, continue with --resume",
                    paths.root, stop.name, stopped_at, train_config.steps)
        result.step, result.stopped = stopped_at, stop.name
        result.steps_per_second = (stopped_at - start_step) / max(elapsed, 1e-9)
        return result
    # fit() has copied the EMA weights into the model: this file holds the EMA weights.
    with atomic_path(paths.weights) as tmp:
        writer.save(model, tmp)
    write_log(paths.log_csv, rows)
    if rows:
        plot_curves(rows, paths.curves)
    result.step = train_config.steps
    result.steps_per_second = remaining / max(elapsed, 1e-9)
    result.samples_per_second = dataset.samples / max(dataset.sample_seconds, 1e-9)
    return result
