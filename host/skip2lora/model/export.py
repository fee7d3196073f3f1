"""A compiled model plus its trained adapters, as numpy logits or as one ONNX file.

`adapted_logits` is the one numpy implementation of "frozen model + adapters" read from the
file formats: it maps the `.s2la` entries onto the reference's own plan and forward pass
(host/skip2lora/training/reference.py), so the host evaluates adapters with the very code that defines
the methods. `export_onnx` writes the same function as an ONNX graph (docs/export.md):

- dense deltas (FT-*) are added to W and b: W + A, b + B;
- a skip or parallel adapter on the LAST layer's input is merged, W_L + s B A (exact: both add
  s B A x_L to the logits);
- every other skip adapter stays a branch x_i A^T B^T s added to the logits: it reads the
  input x_i of an earlier layer, and a ReLU stands between x_i and the logits, so no weight
  matrix can absorb it;
- parallel LoRA adapters on hidden layers stay branches added before that layer's ReLU.
"""
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from skip2lora import __version__
from skip2lora.errors import UserError
from skip2lora.model.formats import (
    KIND_DELTA, KIND_PARALLEL, KIND_SKIP, AdapterFile, ModelFile, read_adapters)
from skip2lora.model.formats import write_atomic  # temp file, fsync, os.replace
from skip2lora.model import peft
from skip2lora.model.onnx_run import run_onnx  # onnxruntime, any declared batch size
from skip2lora.training.reference import Plan, forward

OPSET = 17
IR_VERSION = 8  # the IR version of opset 17, so older onnxruntime releases load the file too
INPUT, OUTPUT = "input", "logits"
ADAPTER_FILE_NAME = "adapters.s2la"
# ONNX float32 against the float64 numpy model, relative to the logit scale: float32 rounding
# of the products and of the merged weights, nothing more (as compile's F32_TOLERANCE).
VERIFY_TOLERANCE = 1e-5

KIND_WORDS = {KIND_SKIP: "skip", KIND_PARALLEL: "parallel LoRA", KIND_DELTA: "dense delta"}


# ---------------------------------------------------------------- finding and checking adapters

def resolve_adapters(path):
    """(AdapterFile, the file it came from) for --adapters: a .s2la file, or a directory
    holding adapters.s2la or the PEFT files (adapters.s2la wins when both are there)."""
    p = Path(path)
    if p.is_dir():
        if (p / ADAPTER_FILE_NAME).is_file():
            return read_adapters(p / ADAPTER_FILE_NAME), str(p / ADAPTER_FILE_NAME)
        if (p / peft.CONFIG_NAME).is_file() or (p / peft.WEIGHTS_NAME).is_file():
            return peft.load_peft_dir(p), str(p / peft.CONFIG_NAME)
        raise UserError(f"holds neither {ADAPTER_FILE_NAME} nor the PEFT files "
                        f"{peft.CONFIG_NAME} + {peft.WEIGHTS_NAME}; pass the adapter file or "
                        f"the directory the adapters were pulled or exported to", p)
    if p.name in (peft.CONFIG_NAME, peft.WEIGHTS_NAME) and p.is_file():
        return peft.load_peft_dir(p.parent), str(p.parent / peft.CONFIG_NAME)
    if not p.exists():
        raise UserError("no such file or directory; pass the .s2la adapter file or a directory "
                        "holding adapters.s2la or the PEFT files", p)
    return read_adapters(p), str(p)


def describe(adapter):
    """'skip adapter on layer 0 (reads x1)': how messages name one adapter."""
    return (f"{KIND_WORDS[adapter.kind]} adapter on layer {adapter.layer} "
            f"(reads x{adapter.layer + 1})")


def check_adapters(model, adapters, model_name=None, adapters_name=None):
    """Refuse adapters that were not trained for this model, with both files named."""
    model_name = model_name or "the model"
    adapters_name = adapters_name or "the adapters"
    if adapters.model_crc != model.file_crc:
        raise UserError(f"{adapters_name} were trained for the model with file CRC "
                        f"0x{adapters.model_crc:08x}, but {model_name} has file CRC "
                        f"0x{model.file_crc:08x}: they belong to another model (or another "
                        f"compile of it); pass the .s2lm they were fine-tuned on, or adapters "
                        f"trained for {model_name}")
    dims, n_layers = model.dims, len(model.layers)
    if adapters.n_classes != dims[-1]:
        raise UserError(f"{adapters_name} are for {adapters.n_classes} classes but {model_name} "
                        f"has {dims[-1]}; they do not belong together")
    slots = set()
    for a in adapters.adapters:
        what = f"{describe(a) if a.kind in KIND_WORDS else f'adapter of kind {a.kind}'} in " \
               f"{adapters_name}"
        if a.kind not in KIND_WORDS:
            raise UserError(f"{what}: kind {a.kind} is not 0 skip, 1 parallel or 2 delta")
        if not 0 <= a.layer < n_layers:
            raise UserError(f"{what}: {model_name} has only layers 0..{n_layers - 1}")
        d_in, d_out = dims[a.layer], dims[a.layer + 1]
        expected = {KIND_SKIP: ((adapters.rank, d_in), (dims[-1], adapters.rank)),
                    KIND_PARALLEL: ((adapters.rank, d_in), (d_out, adapters.rank)),
                    KIND_DELTA: ((d_out, d_in), (d_out, 1))}[a.kind]
        shapes = (np.shape(a.A), np.shape(a.B) if np.ndim(a.B) == 2 else (np.size(a.B), 1))
        if shapes != expected:
            raise UserError(f"{what}: A is {shapes[0]} and B {shapes[1]}, but layer {a.layer} "
                            f"of {model_name} ({d_in} -> {d_out}, rank {adapters.rank}) needs "
                            f"{expected[0]} and {expected[1]}; they do not belong together")
        slot = (a.layer, a.kind == KIND_DELTA)
        if slot in slots:
            raise UserError(f"{what}: layer {a.layer} already has a "
                            f"{'dense delta' if slot[1] else 'low-rank adapter'} in that file; "
                            f"no skip2lora method writes two")
        slots.add(slot)


# ---------------------------------------------------------------- numpy

def _reference_state(model, adapters):
    """The reference's network, plan and params for a model file and an adapter file."""
    net = model.to_network()
    if adapters is None:
        return net, Plan(method="frozen", scale=1.0), {}
    skip, lora, delta, params = [], [], [], {}
    for a in adapters.adapters:
        i = a.layer
        if a.kind == KIND_DELTA:
            delta.append(i)
            params[f"W{i}"] = np.asarray(a.A, np.float64)
            params[f"b{i}"] = np.asarray(a.B, np.float64).reshape(-1)
        else:
            (skip if a.kind == KIND_SKIP else lora).append(i)
            params[f"A{i}"] = np.asarray(a.A, np.float64)
            params[f"B{i}"] = np.asarray(a.B, np.float64)
    plan = Plan(method=adapters.method, scale=float(adapters.scaling), skip=tuple(sorted(skip)),
                 lora=tuple(sorted(lora)), weights=tuple(sorted(delta)),
                 biases=tuple(sorted(delta)))
    return net, plan, params


def adapted_logits(model, adapters, X, model_name=None, adapters_name=None):
    """float64 logits of the frozen model (int8 weights dequantized) with the adapters applied.

    adapters may be None (the frozen model). X is (n, d_1) or (d_1,).
    """
    if adapters is not None:
        check_adapters(model, adapters, model_name, adapters_name)
    X = np.atleast_2d(np.asarray(X, np.float64))
    d_1 = model.dims[0]
    if X.ndim != 2 or X.shape[1] != d_1:
        raise UserError(f"inputs have shape {X.shape}, {model_name or 'the model'} needs "
                        f"(n, {d_1})")
    net, plan, params = _reference_state(model, adapters)
    return forward(net, plan, params, X)[0]


# ---------------------------------------------------------------- ONNX

@dataclass
class ExportReport:
    """What export_onnx did with each adapter, for the command to print."""

    path: str
    merged: list = field(default_factory=list)    # "dense delta adapter ... -> layers.1.weight"
    branches: list = field(default_factory=list)  # "skip adapter ... -> logits"
    max_abs_error: float = None  # onnxruntime against adapted_logits, when verified
    output_scale: float = None

    @property
    def relative_error(self):
        return None if self.max_abs_error is None else self.max_abs_error / self.output_scale


def _load_onnx():
    try:
        import onnx
    except ImportError:
        raise UserError("ONNX export needs the Python package 'onnx': "
                        "pip install 'skip2lora[onnx]'") from None
    return onnx


def build_onnx(model, adapters=None, merge=True):
    """(onnx.ModelProto, merged descriptions, branch descriptions); adapters must be checked."""
    onnx = _load_onnx()
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, merged, branches = [], [], [], []
    n_layers = len(model.layers)
    last = n_layers - 1
    entries = list(adapters.adapters) if adapters is not None else []
    scale = float(adapters.scaling) if adapters is not None else 1.0

    def init(name, array):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
        return name

    def branch(a, x, prefix):
        """s * (x A^T) B^T as MatMul, MatMul (, Mul); returns its output name."""
        u, v = f"{prefix}.u", f"{prefix}.out"
        nodes.append(helper.make_node("MatMul", [x, init(f"{prefix}.A_T", np.asarray(a.A).T)],
                                      [u], name=f"{prefix}.A"))
        out = v if scale == 1.0 else f"{prefix}.unscaled"
        nodes.append(helper.make_node("MatMul", [u, init(f"{prefix}.B_T", np.asarray(a.B).T)],
                                      [out], name=f"{prefix}.B"))
        if scale != 1.0:
            if "adapter_scale" not in {t.name for t in inits}:
                init("adapter_scale", np.array(scale))
            nodes.append(helper.make_node("Mul", [out, "adapter_scale"], [v],
                                          name=f"{prefix}.scale"))
        return v

    def add(a_name, b_name, out):
        nodes.append(helper.make_node("Add", [a_name, b_name], [out], name=out))
        return out

    xs, x, h = [], INPUT, None
    for i, layer in enumerate(model.layers):
        xs.append(x)
        W = layer.dequantized().astype(np.float64)
        b = np.asarray(layer.bias, np.float64)
        here = [a for a in entries if a.layer == i]
        for a in here:
            if a.kind == KIND_DELTA:
                W, b = W + np.asarray(a.A, np.float64), b + np.asarray(a.B, np.float64).ravel()
                merged.append(f"{describe(a)} -> layers.{i}.weight and .bias (W + A, b + B)")
            elif i == last and merge:
                W = W + scale * (np.asarray(a.B, np.float64) @ np.asarray(a.A, np.float64))
                merged.append(f"{describe(a)} -> layers.{i}.weight (W + s B A)")
        h = f"layers.{i}.out"
        nodes.append(helper.make_node(
            "Gemm", [x, init(f"layers.{i}.weight", W), init(f"layers.{i}.bias", b)], [h],
            name=f"layers.{i}", transB=1))
        for a in here:
            if a.kind == KIND_PARALLEL and not (i == last and merge):
                h = add(h, branch(a, x, f"layers.{i}.lora"), f"layers.{i}.adapted")
                branches.append(f"{describe(a)} -> added to layers.{i} output"
                                f"{' before its ReLU' if i < last else ''}")
        if i < last:
            x = f"x{i + 2}"
            nodes.append(helper.make_node("Relu", [h], [x], name=f"layers.{i}.relu"))
    for a in sorted(entries, key=lambda a: a.layer):
        if a.kind == KIND_SKIP and not (a.layer == last and merge):
            h = add(h, branch(a, xs[a.layer], f"skip.{a.layer}"), f"logits.plus_skip{a.layer}")
            branches.append(f"{describe(a)} -> added to the logits")
    nodes[-1].output[0] = OUTPUT  # h is the last node's output: name it "logits"

    dims = model.dims
    what = "frozen model" if adapters is None else (
        f"frozen model with {adapters.method} adapters (scale alpha/r = {scale:g})")
    graph = helper.make_graph(
        nodes, "skip2lora",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", dims[0]])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", dims[-1]])],
        inits, doc_string=f"skip2lora {what}: {'-'.join(map(str, dims))} MLP, Gemm+Relu chain; "
                          f"merged: {'; '.join(merged) or 'none'}; branches: "
                          f"{'; '.join(branches) or 'none'}")
    proto = helper.make_model(graph, producer_name="skip2lora", producer_version=__version__,
                              opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = IR_VERSION
    props = {"skip2lora_model_crc": f"0x{model.file_crc:08x}",
             "skip2lora_weights": "int8 dequantized to float32" if model.layers[0].scale
             is not None else "float32"}
    if adapters is not None:
        props.update(skip2lora_adapters_method=adapters.method,
                     skip2lora_adapters_crc=f"0x{adapters.file_crc:08x}",
                     skip2lora_epochs_done=str(adapters.epochs_done),
                     skip2lora_rank=str(adapters.rank), skip2lora_alpha=f"{adapters.alpha:g}")
    helper.set_model_props(proto, props)
    onnx.checker.check_model(proto, full_check=True)
    return proto, merged, branches


def export_onnx(model: ModelFile, adapters: AdapterFile = None, path="adapted.onnx", merge=True,
                verify=True, model_name=None, adapters_name=None):
    """Write model + adapters as one ONNX file (opset 17, input "input" [batch, d_1], output
    "logits" [batch, C]); returns an ExportReport. merge=False keeps last-layer low-rank
    adapters as branches too (dense deltas are always merged). verify runs the file with
    onnxruntime on random inputs against adapted_logits and refuses to keep a file that
    disagrees."""
    if adapters is not None:
        check_adapters(model, adapters, model_name, adapters_name)
    proto, merged, branches = build_onnx(model, adapters, merge)
    data = proto.SerializeToString()
    report = ExportReport(str(path), merged, branches)
    if verify:
        x = np.random.default_rng(0).standard_normal((256, model.dims[0])).astype(np.float32)
        expected = adapted_logits(model, adapters, x)
        got = np.asarray(run_onnx(data, x), np.float64)
        report.max_abs_error = float(np.max(np.abs(got - expected)))
        report.output_scale = max(float(np.max(np.abs(expected))), 1e-12)
        if report.relative_error > VERIFY_TOLERANCE:
            raise UserError(f"the exported graph disagrees with the numpy model (max abs error "
                            f"{report.max_abs_error:.3g}, {report.relative_error:.3g} of the "
                            f"logit scale); this is a skip2lora bug, please report it", path)
    try:
        write_atomic(path, data)
    except OSError as exc:
        raise UserError(f"cannot write the ONNX file: {exc.strerror or exc}", path) from None
    return report
