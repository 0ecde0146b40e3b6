"""Multi-device data-parallel training (``--distribute mirrored``): the one module that picks a strategy.

The network is copied onto every visible device (the GPUs; on a host without GPUs, the CPU devices
the backend has been given) and each global batch (:attr:`flare_seg.config.TrainConfig.batch_size`)
is split evenly between them:

* TensorFlow: ``tf.distribute.MirroredStrategy``. The model is built, compiled (Adam's moments and
  the EMA copies with it) and restored inside ``strategy.scope()``; ``fit`` splits each batch of
  the ``PyDataset`` over the replicas and sums their gradients.
* JAX: ``keras.distribution.DataParallel`` over ``jax.devices()``, in force while the model is
  built and trained; each step computes on the global batch sharded over the devices.
* PyTorch: refused.

What would make a replica's step differ from one device computing the whole batch:

* dropout masks: :class:`flare_seg.models.layers.GlobalBatchDropout` draws the global batch's mask;
* ``--clipnorm``: Keras clips each TensorFlow replica's gradients *before* they are summed, which is
  not the clipping of one device, so TensorFlow refuses it (JAX clips the global gradients: allowed);
* batch Dice (``--loss hybrid``): on TensorFlow each replica computes it over its own share of the
  batch (a warning says so). Summing its terms over the replicas with ``ReplicaContext.all_reduce``
  inside the loss failed: the replicas' collectives were paired out of order ("Shape mismatch in the
  collective instance ...: expected shape [15] but another member ... expected shape [23354]",
  TensorFlow 2.21, 2 logical CPUs). JAX computes it on the global batch.

With these, 2 logical CPUs give the one-device loss curve of the same global batch (tests/test_distribute.py:
a relative loss gap of 2e-7 over 4 TensorFlow steps, none on JAX).
Resuming a run with the same ``--distribute`` and devices is exact; with another device count it
continues within float tolerance (gradients are summed in another order).
With one visible device the run warns and trains on it, exactly as without ``--distribute``.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from flare_seg.config import TrainConfig
from flare_seg.runtime import backend_name

log = logging.getLogger(__name__)

#: ``--distribute`` choices.
STRATEGIES = ("mirrored",)


@dataclass(frozen=True)
class Distribution:
    """Where a run trains: ``devices`` (empty: the backend's default device) and the backend's
    strategy object (``tf.distribute.Strategy`` or ``keras.distribution.DataParallel``; None for one device)."""

    name: str = "none"
    devices: tuple[str, ...] = ()
    strategy: object = None

    @property
    def replicas(self) -> int:
        return max(1, len(self.devices))

    def scope(self):
        """Context in which the model is built, compiled, restored and trained."""
        return contextlib.nullcontext() if self.strategy is None else self.strategy.scope()


def make_distribution(name: str | None, train_config: TrainConfig) -> Distribution:
    """The :class:`Distribution` for ``--distribute name`` (None: one device), checked against the settings."""
    if name is None:
        return Distribution()
    if name not in STRATEGIES:
        raise ValueError(f"distribute must be one of {STRATEGIES}, got {name!r}")
    backend = backend_name()
    if backend == "tensorflow":
        distribution = _tensorflow_mirrored(name)
    elif backend == "jax":
        distribution = _jax_data_parallel(name)
    else:
        raise ValueError(f"--distribute {name} needs the TensorFlow or JAX backend, not {backend}")
    check(distribution, train_config, backend)
    if distribution.replicas > 1:
        log.info("--distribute %s: %d replicas on %s, %d samples each per step", name, distribution.replicas,
                 ", ".join(distribution.devices), train_config.batch_size // distribution.replicas)
    return distribution


def check(distribution: Distribution, train_config: TrainConfig, backend: str) -> None:
    """Refuse settings that would not train as on one device (see the module docstring)."""
    if distribution.replicas == 1:
        return
    if train_config.batch_size % distribution.replicas:
        raise ValueError(f"--batch-size {train_config.batch_size} does not split evenly over "
                         f"{distribution.replicas} devices; use a multiple of {distribution.replicas}")
    if backend == "tensorflow" and train_config.clipnorm is not None:
        raise ValueError(f"--clipnorm cannot be used with --distribute {distribution.name} on TensorFlow: "
                         "Keras clips each replica's gradients before summing them")
    if backend == "tensorflow" and train_config.loss == "hybrid":
        log.warning("--loss hybrid with --distribute %s on TensorFlow: each of the %d replicas computes batch "
                    "Dice over its own %d samples, not over the global batch", distribution.name,
                    distribution.replicas, train_config.batch_size // distribution.replicas)


def _one_device(name: str, devices: list[str]) -> Distribution:
    log.warning("--distribute %s: one device visible (%s); training on it alone", name,
                devices[0] if devices else "none")
    return Distribution()


def _tensorflow_mirrored(name: str) -> Distribution:
    import tensorflow as tf

    devices = [d.name for d in tf.config.list_logical_devices("GPU")] or \
        [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(devices) < 2:
        return _one_device(name, devices)
    return Distribution(name, tuple(devices), tf.distribute.MirroredStrategy(devices))


def _jax_data_parallel(name: str) -> Distribution:
    import jax
    import keras

    devices = jax.devices()  # the default platform's: GPUs if any, else the CPU devices
    if len(devices) < 2:
        return _one_device(name, [str(d) for d in devices])
    return Distribution(name, tuple(str(d) for d in devices), keras.distribution.DataParallel(devices=devices))
