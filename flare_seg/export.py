"""Export the Keras networks to ONNX (and OpenVINO IR), split for bounded memory.

One ONNX graph is written per Keras graph by walking the functional model (layer by layer, in
channels-first layout, which ONNX convolutions use), then cut into *pieces* with ONNX's own
extractor so the inference engines can run the full-resolution level of a U-Net in overlapping
z-slabs (:mod:`flare_seg.engines.split`):

* ``head``: image -> full-resolution down block -> first pooling (run in z-slabs), and ``head2``
  the same one level down (half resolution, z-slabs);
* ``core``: the coarser levels (1/4 resolution and below), whole (8x smaller per level);
* ``tail2``, ``tail``: a level's input + the coarser output -> its down block again (recomputed,
  not stored), upsampling, skip concatenation, up block (and, at full resolution, the logits), in
  z-slabs;
* ``pool``, ``spatial``, ``combine`` (SCN only): the spatial part at 1/4 resolution whole, its
  pooling and the combination in z-slabs.

How many levels are slabbed is :data:`SPLIT_DEPTH`; an export records its pieces, so exports of
an earlier depth still run.

Spatial axes are dynamic (``z, y, x``) rather than one file per valid grid size: the SCN alone has
100 valid sizes and the localizer several hundred, and the slabs add their own sizes. Both engines
compile dynamic shapes on the CPU. ``export.json`` beside each network records the pieces, their
tensor names, the slab halos, the opset, the versions and the sha256 of the source weights.

Only this module and :mod:`flare_seg.cli.export` need Keras; the engines read plain files.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flare_seg import __version__
from flare_seg.atomic import atomic_path, copy_file, write_text

log = logging.getLogger(__name__)

OPSET = 17
EXPORT_FILE = "export.json"
FORMATS = ("onnx", "openvino")
#: The tensor each network's engines must return (what :class:`flare_seg.predict.Segmenter` reads).
OUTPUTS = {"localizer": "logits", "segmenter": "prob"}
#: Seed 001's presence head: the model output and the tensor (its last Dense layer) the pieces carry.
PRESENCE_OUTPUT, PRESENCE_LOGITS = "presence", "presence_logits"
_TO_CHANNELS_LAST = [0, 2, 3, 4, 1]


@dataclass
class _Graph:
    """ONNX nodes and constants under construction (tensor names = Keras layer names)."""

    nodes: list
    initializers: list

    def const(self, name: str, array) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output


def _conv(g: _Graph, layer, x: str) -> str:
    kernel, bias = (np.asarray(w, dtype=np.float32) for w in layer.get_weights())
    same = layer.padding == "same" or all(k == 1 for k in kernel.shape[:3])
    if not same or any(s != 1 for s in layer.strides) or any(d != 1 for d in layer.dilation_rate):
        raise ValueError(f"{layer.name}: only stride-1 'same' convolutions are exported")
    activation = layer.activation.__name__
    if activation not in ("linear", "sigmoid"):
        raise ValueError(f"{layer.name}: fused activation {activation} is not exported")
    pads = [k // 2 for k in kernel.shape[:3]] * 2
    w = g.const(f"{layer.name}.kernel", np.ascontiguousarray(kernel.transpose(4, 3, 0, 1, 2)))
    b = g.const(f"{layer.name}.bias", bias)
    conv = g.node("Conv", [x, w, b], layer.name if activation == "linear" else f"{layer.name}.linear",
                  kernel_shape=list(kernel.shape[:3]), pads=pads)
    return conv if activation == "linear" else g.node("Sigmoid", [conv], layer.name)  # the attention gates' psi


def _combine(g: _Graph, layer, local: str, spatial: str) -> str:
    p_local = g.node("Sigmoid", [local], f"{layer.name}.p_local")
    p_spatial = g.node("Sigmoid", [spatial], f"{layer.name}.p_spatial")
    if layer.mode == "multiply":
        return g.node("Mul", [p_local, p_spatial], layer.name)
    n = layer.name
    lo, hi = g.const(f"{n}.eps", np.float32(1e-6)), g.const(f"{n}.one_minus_eps", np.float32(1 - 1e-6))
    one, inv_log2 = g.const(f"{n}.one", np.float32(1.0)), g.const(f"{n}.inv_log2", np.float32(-1 / np.log(2.0)))
    q = g.node("Clip", [p_spatial, lo, hi], f"{n}.q")
    r = g.node("Sub", [one, q], f"{n}.r")
    h = g.node("Add", [g.node("Mul", [q, g.node("Log", [q], f"{n}.log_q")], f"{n}.q_log_q"),
                       g.node("Mul", [r, g.node("Log", [r], f"{n}.log_r")], f"{n}.r_log_r")], f"{n}.sum")
    u = g.node("Mul", [h, inv_log2], f"{n}.u")
    blend = g.node("Mul", [u, p_local], f"{n}.u_local")
    rest = g.node("Mul", [g.node("Sub", [one, u], f"{n}.one_minus_u"), p_spatial], f"{n}.rest")
    return g.node("Add", [blend, rest], n)


def _dense(g: _Graph, layer, x: str) -> str:
    kernel, bias = (np.asarray(w, dtype=np.float32) for w in layer.get_weights())
    if layer.activation.__name__ != "linear":
        raise ValueError(f"{layer.name}: fused activation {layer.activation.__name__} is not exported")
    product = g.node("MatMul", [x, g.const(f"{layer.name}.kernel", kernel)], f"{layer.name}.matmul")
    return g.node("Add", [product, g.const(f"{layer.name}.bias", bias)], layer.name)


def _presence_scale(g: _Graph, layer, prob: str, logits: str) -> str:
    """:class:`flare_seg.models.layers.PresenceScale` on channels-first ``prob`` ``(1, labels, z, y, x)``.

    The spatial tensor comes first in every node's inputs (:func:`_context` reads z factors so)."""
    n = layer.name
    one = g.const(f"{n}.one", np.float32(1.0))
    q = g.node("Reshape", [g.node("Sigmoid", [logits], f"{n}.q_flat"), g.const(f"{n}.shape", np.array(
        [0, -1, 1, 1, 1], np.int64))], f"{n}.q")
    axis = g.const(f"{n}.axis", np.array([1], np.int64))
    background = g.node("Slice", [prob, g.const(f"{n}.start0", np.array([0], np.int64)),
                                  g.const(f"{n}.end0", np.array([1], np.int64)), axis], f"{n}.p_bg")
    end = np.array([np.iinfo(np.int64).max], np.int64)
    organs = g.node("Slice", [prob, g.const(f"{n}.start1", np.array([1], np.int64)), g.const(f"{n}.end1", end), axis],
                    f"{n}.p_organs")
    suppressed = g.node("Mul", [organs, g.node("Sub", [one, q], f"{n}.one_minus_q")], f"{n}.suppressed")
    kept = g.node("ReduceProd", [g.node("Sub", [one, suppressed], f"{n}.not_suppressed")], f"{n}.kept",
                  axes=[1], keepdims=1)
    not_background = g.node("Mul", [g.node("Sub", [one, background], f"{n}.one_minus_bg"), kept],
                            f"{n}.not_background")
    return g.node("Concat", [g.node("Sub", [one, not_background], f"{n}.background"),
                             g.node("Mul", [organs, q], f"{n}.organs")], n, axis=1)


def _layer_node(g: _Graph, layer, inputs: list[str]) -> str:
    """Append the ONNX node(s) of one Keras layer; returns its output tensor's name."""
    kind = type(layer).__name__
    name = layer.name
    if kind == "Conv3D":
        return _conv(g, layer, inputs[0])
    if kind == "LeakyReLU":
        return g.node("LeakyRelu", inputs, name, alpha=float(layer.negative_slope))
    if kind in ("Dropout", "GlobalBatchDropout", "StopGradient"):  # identities at inference
        return g.node("Identity", inputs, name)
    if kind == "Activation" and layer.activation.__name__ in ("sigmoid", "relu"):
        return g.node(layer.activation.__name__.capitalize(), inputs, name)
    if kind in ("Add", "Multiply"):  # the attention gates (ONNX broadcasts psi's one channel)
        return g.node("Add" if kind == "Add" else "Mul", inputs, name)
    if kind == "AveragePooling3D":
        if layer.padding != "valid" or tuple(layer.strides) != tuple(layer.pool_size):
            raise ValueError(f"{name}: only non-overlapping 'valid' pooling is exported")
        return g.node("AveragePool", inputs, name, kernel_shape=list(layer.pool_size), strides=list(layer.strides))
    if kind == "LinearUpSampling3D":  # half-pixel, edge-clamped: ONNX Resize linear / half_pixel
        scales = g.const(f"{name}.scales", np.array([1, 1] + [layer.factor] * 3, np.float32))
        return g.node("Resize", [inputs[0], "", scales], name, mode="linear",
                      coordinate_transformation_mode="half_pixel")
    if kind == "Concatenate":
        if layer.axis not in (-1, 4):
            raise ValueError(f"{name}: only channel concatenation is exported")
        return g.node("Concat", inputs, name, axis=1)
    if kind == "SelectChannels":
        return g.node("Gather", [inputs[0], g.const(f"{name}.channels", np.array(layer.channels, np.int64))],
                      name, axis=1)
    if kind == "SCNCombine":
        return _combine(g, layer, *inputs)
    if kind in ("GlobalAveragePooling3D", "GlobalMaxPooling3D"):  # (n, c, z, y, x) -> (n, c)
        if layer.keepdims:
            raise ValueError(f"{name}: only pooling without keepdims is exported")
        pooled = g.node("GlobalAveragePool" if kind == "GlobalAveragePooling3D" else "GlobalMaxPool",
                        inputs, f"{name}.pooled")
        return g.node("Flatten", [pooled], name, axis=1)
    if kind == "Dense":
        return _dense(g, layer, inputs[0])
    if kind == "PresenceScale":
        return _presence_scale(g, layer, *inputs)
    raise ValueError(f"{name}: layer type {kind} has no ONNX export")


def keras_to_onnx(model, output: str, graph_name: str):
    """The ONNX model (opset :data:`OPSET`) computing ``model``'s output ``output`` at inference.

    Input ``image`` is ``(1, channels, z, y, x)`` (channels first: with one channel a free reshape
    of a ``(z, y, x)`` array); the output keeps Keras' ``(1, z, y, x, c)`` layout. Tensor names are
    layer names.
    """
    import onnx
    from onnx import TensorProto, helper

    g = _Graph([], [])
    names: dict[int, str] = {}

    def visit(tensor) -> str:
        if id(tensor) in names:
            return names[id(tensor)]
        layer, node_index, _ = tensor._keras_history
        if type(layer).__name__ == "InputLayer":
            names[id(tensor)] = layer.name
            return layer.name
        args = layer._inbound_nodes[node_index].arguments.keras_tensors
        names[id(tensor)] = _layer_node(g, layer, [visit(t) for t in args])
        return names[id(tensor)]

    last = visit(model.output[output])
    g.node("Transpose", [last], output, perm=_TO_CHANNELS_LAST)
    dims = ["n", "c", "z", "y", "x"]
    channels = int(model.inputs[0].shape[-1])  # 2 with seed 000's anatomical channel
    image = helper.make_tensor_value_info(model.inputs[0].name, TensorProto.FLOAT, [1, channels] + dims[2:])
    out = helper.make_tensor_value_info(output, TensorProto.FLOAT, [1, "z", "y", "x", None])
    graph = helper.make_graph(g.nodes, graph_name, [image], [out], g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="flare-seg", producer_version=__version__)
    proto = onnx.shape_inference.infer_shapes(proto)
    onnx.checker.check_model(proto)
    return proto


#: U-Net levels run in z-slabs (the finest ones), the coarser rest whole. With one level the
#: half-resolution maps of the core (32 channels, up to 80x64x80, several alive at once) were the
#: peak of a large case; with two the largest tensor the core holds is 1/4 resolution.
SPLIT_DEPTH = 2


def _split_plan(kind: str, config, depth: int = SPLIT_DEPTH) -> dict:
    """Pieces in running order: inputs -> output by tensor name, each input's z factor, slabbed or whole.

    Level ``d`` (``1 <= d <= depth``) gets a ``head`` piece (its input -> down block -> pooling)
    and, on the way back, a ``tail`` piece (its input again + the coarser output -> down block
    recomputed, upsampling, skip, up block); level 0's are ``head`` and ``tail``, level d's
    ``head{d+1}`` / ``tail{d+1}``. ``core`` runs the levels below ``depth`` whole. The SCN adds its
    spatial part (``pool``, ``spatial``, ``combine``); a U-Net segmenter (``unet``,
    ``attention_unet``: the gates of a level live in its tail) ends at ``tail``; a presence head
    adds ``presence``, whose logits the last piece takes whole.
    """
    prefix, net = ("loc", config.network) if kind == "localizer" else ("local", config.local)
    if not 1 <= depth < net.levels:
        raise ValueError(f"{kind}: a {net.levels}-level U-Net splits at 1..{net.levels - 1} levels, got {depth}")

    def level_input(level: int) -> str:
        return "image" if level == 0 else f"{prefix}_pool{level}"

    def suffix(level: int) -> str:
        return "" if level == 0 else str(level + 1)

    pieces = {}
    for level in range(depth):
        pieces[f"head{suffix(level)}"] = ({level_input(level): 2 ** level}, f"{prefix}_pool{level + 1}", True)
    scn = kind == "segmenter" and getattr(config, "architecture", "scn") == "scn"
    # a U-Net segmenter's full-resolution tail ends at the output (sigmoid, presence scaling)
    last = f"{prefix}_logits" if kind == "localizer" or scn else OUTPUTS[kind]
    pieces["core"] = ({level_input(depth): 2 ** depth}, f"{prefix}_up{depth}_drop2", False)
    for level in reversed(range(depth)):
        out = last if level == 0 else f"{prefix}_up{level}_drop2"
        pieces[f"tail{suffix(level)}"] = ({level_input(level): 2 ** level, f"{prefix}_up{level + 1}_drop2":
                                           2 ** (level + 1)}, out, True)
    logits = f"{prefix}_logits"
    presence = kind == "segmenter" and getattr(config, "presence_head", False)
    if presence:  # seed 001's head pools the whole bottom map: it runs whole, from the core's input
        pieces = dict(_insert_after(pieces, "core", "presence",
                                    ({level_input(depth): 2 ** depth}, PRESENCE_LOGITS, False)))
    scaled = {PRESENCE_LOGITS: 0} if presence else {}  # the piece that ends at the output scales by it
    if scn:  # the spatial part: pooling and combination per slab, the nets at 1/4 whole
        f = config.spatial_downsample
        pieces.update({"pool": ({"image": 1, logits: 1}, "spatial_stack", True),
                       "spatial": ({"spatial_stack": f}, "spatial_logits_small", False),
                       "combine": ({logits: 1, "spatial_logits_small": f} | scaled, OUTPUTS[kind], True)})
    elif presence:
        tail_inputs, tail_out, tail_slabbed = pieces["tail"]
        pieces["tail"] = (tail_inputs | scaled, tail_out, tail_slabbed)
    extra = {"extra_outputs": {PRESENCE_OUTPUT: PRESENCE_LOGITS}} if presence else {}
    return {"prefix": prefix, "split_depth": depth, **extra, "pieces": {
        name: {"inputs": list(inputs), "input_z_factors": list(inputs.values()), "outputs": [output],
               "slabbed": slabbed, "z_axis": 1 if output == OUTPUTS[kind] else 2}
        for name, (inputs, output, slabbed) in pieces.items()}}


def _insert_after(pieces: dict, after: str, name: str, piece) -> list:
    items = list(pieces.items())
    at = [n for n, _ in items].index(after) + 1
    return items[:at] + [(name, piece)] + items[at:]


def _attr(node, name: str):
    from onnx import helper

    return next(helper.get_attribute_value(a) for a in node.attribute if a.name == name)


def _context(piece, input_factors: dict[str, int], initializers: dict) -> tuple[int, int]:
    """(halo, output z factor) of a piece: how deep, in full-resolution z voxels, a slab edge's error reaches.

    Per tensor: its z factor (vs the image) and the depth of the region a cut slab gets wrong. A
    3x3x3 convolution adds one voxel at its resolution, a pooling rounds up to whole output voxels,
    a linear x``r`` upsampling adds ``ceil(r / 2)`` output voxels (the edge clamp), elementwise
    operations take the deepest input. A tensor without a z axis (the presence logits) has factor 0
    and depth 0, so an elementwise operation with it keeps the spatial input's. Checked against the
    untiled net by the tests.
    """
    factor = dict(input_factors)
    depth = dict.fromkeys(input_factors, 0)
    for node in piece.graph.node:
        ins = [t for t in node.input if t in factor]
        fi, di = (max(factor[t] for t in ins), max(depth[t] for t in ins)) if ins else (1, 0)
        fo, do = fi, di
        if node.op_type == "Conv":
            do = di + (_attr(node, "kernel_shape")[0] // 2) * fi
        elif node.op_type == "AveragePool":
            fo = fi * _attr(node, "kernel_shape")[0]
            do = -(-di // fo) * fo
        elif node.op_type == "Resize":
            r = int(round(float(initializers[node.input[2]][2])))
            fo = fi // r
            do = di + -(-r // 2) * fo
        for out in node.output:
            factor[out], depth[out] = fo, do
    output = piece.graph.output[0].name
    return depth[output], factor[output]


def _extract(whole, inputs: list[str], outputs: list[str]):
    import onnx
    import onnx.utils

    piece = onnx.utils.Extractor(whole).extract_model(inputs, outputs)
    onnx.checker.check_model(piece)
    return piece


def engine_versions() -> dict:
    """Versions of the packages an export depends on (those installed)."""
    from importlib import metadata

    versions = {}
    for package in ("onnx", "onnxruntime", "openvino", "keras", "tensorflow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _write_onnx(proto, path: Path) -> None:
    import onnx

    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))


def _write_openvino(proto, path_xml: Path) -> None:
    """OpenVINO IR (``.xml`` + ``.bin``, float32 weights); the ``.bin`` lands first, then the ``.xml``."""
    import openvino as ov

    from flare_seg.atomic import temporary_path

    tmp = temporary_path(path_xml.parent / f"{path_xml.stem}_ir")
    tmp.mkdir()
    try:
        _write_onnx(proto, tmp / "piece.onnx")
        ov.save_model(ov.convert_model(str(tmp / "piece.onnx")), str(tmp / "piece.xml"), compress_to_fp16=False)
        copy_file(tmp / "piece.bin", path_xml.with_suffix(".bin"))
        copy_file(tmp / "piece.xml", path_xml)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export_network(src: Path, dst: Path, kind: str, fmt: str) -> dict:
    """Export one network folder (``config.json`` + weights) into ``dst``; returns its export record."""
    from onnx import numpy_helper

    from flare_seg.config import LocalizerConfig, SegmenterConfig
    from flare_seg.predict import CONFIG_FILE, WEIGHTS_FILE, load_model

    loaded = load_model(src, LocalizerConfig if kind == "localizer" else SegmenterConfig)
    whole = keras_to_onnx(loaded.model, OUTPUTS[kind], f"flare_seg_{src.name}")
    plan = _split_plan(kind, loaded.config)
    dst.mkdir(parents=True, exist_ok=True)
    initializers = {t.name: numpy_helper.to_array(t) for t in whole.graph.initializer}
    for name, piece in plan["pieces"].items():
        proto = _extract(whole, piece["inputs"], piece["outputs"])
        halo, piece["output_z_factor"] = _context(proto, dict(zip(piece["inputs"], piece["input_z_factors"],
                                                                 strict=True)), initializers)
        piece["align_z"] = max(piece["input_z_factors"] + [piece["output_z_factor"]])
        piece["halo_z"] = -(-halo // piece["align_z"]) * piece["align_z"] if piece["slabbed"] else 0
        if fmt == "onnx":
            _write_onnx(proto, dst / f"{name}.onnx")
        else:
            _write_openvino(proto, dst / f"{name}.xml")
    if src.resolve() != dst.resolve():
        for file in (CONFIG_FILE, WEIGHTS_FILE, f"{WEIGHTS_FILE}.sha256"):
            if (src / file).exists():
                copy_file(src / file, dst / file)
    channels = getattr(loaded.config, "input_channels", 1)
    record = {"flare_seg_version": __version__, "kind": kind, "formats": [fmt], "opset": OPSET,
              "versions": engine_versions(), "source_weights": {"file": WEIGHTS_FILE, "sha256": loaded.weights_sha256},
              "output": OUTPUTS[kind], "input": "image", "input_layout": f"(1, {channels}, z, y, x) float32",
              "output_layout": "(1, z, y, x, labels) float32", **plan}
    previous = _read_record(dst)
    if previous and previous.get("source_weights") == record["source_weights"] and previous.get("opset") == OPSET:
        record["formats"] = sorted(set(previous.get("formats", [])) | {fmt})
    write_text(dst / EXPORT_FILE, json.dumps(record, indent=2) + "\n")
    return record


def _read_record(folder: Path) -> dict | None:
    path = folder / EXPORT_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a valid export record ({err})") from None


def export(model_dir: str | Path, out_dir: str | Path, fmt: str = "onnx") -> dict[str, dict]:
    """Export ``model_dir/{loc,seg}`` into ``out_dir/{loc,seg}`` (each beside its config.json)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    records = {}
    for net, kind in (("loc", "localizer"), ("seg", "segmenter")):
        if not (model_dir / net).is_dir():
            raise FileNotFoundError(f"{model_dir / net}: network folder not found (expected loc/ and seg/)")
        records[net] = export_network(model_dir / net, out_dir / net, kind, fmt)
        log.info("exported %s -> %s (%s)", model_dir / net, out_dir / net, fmt)
    return records
