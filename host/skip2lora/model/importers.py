"""Read a user's ONNX or PyTorch model into the one internal form, a `Network`.

Each importer only translates its format's nodes or modules into a short list of steps
(linear, batch-norm, bias, scale, ReLU, trailing softmax or binary sigmoid); one assembler turns
the steps into a Network and owns every rule about what a valid chain is, folding every affine
map into a linear layer. So ONNX and torch models are held to the same rules, give the same
messages, and everything after import has one code path. A converted scikit-learn classifier
(skl2onnx: label and probabilities outputs) is read up to its class scores, leaving out the
post-processing the board does not need; whatever would change the maths is refused.

Each importer also returns a callable that runs the original model in its own runtime
(onnxruntime, torch), so the compiler can prove the compiled arrays compute the same thing.
"""
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from skip2lora.errors import UserError
from skip2lora.model.network import Dense, Network
from skip2lora.model.onnx_run import OnnxRunner

ONNX_SUPPORTED = ("Gemm, MatMul (+ Add of a constant bias), Relu, BatchNormalization, Scaler "
                  "and Add/Sub/Mul/Div by per-feature constants (folded into the adjacent linear "
                  "layer), Flatten, Identity, Dropout, Cast to float, a trailing "
                  "Softmax/LogSoftmax, or a Sigmoid after a one-unit last layer (binary)")
TORCH_SUPPORTED = ("Linear, ReLU, BatchNorm1d (folded into the adjacent Linear), Dropout, "
                   "Flatten, Identity, a trailing Softmax/LogSoftmax, or a Sigmoid after a "
                   "one-unit last Linear (binary), inside nn.Sequential (nesting allowed)")
ONNX_EXTENSIONS = (".onnx",)
TORCH_EXTENSIONS = (".pt", ".pth", ".ptl", ".torchscript")

# Output of the original model, so the verifier maps the compiled logits into the same space.
LOGITS, SOFTMAX, LOG_SOFTMAX = "logits", "softmax", "log_softmax"
# The assembler's word for a final sigmoid on one unit, which it turns into two logits [0, z];
# the importer then maps the original's output to [1 - p, p] and reports SOFTMAX.
SIGMOID = "sigmoid"
# An input scaling folded into a layer whose per-feature factors differ by more than this gets a
# note: int8 rows then quantize the small columns coarsely (a StandardScaler on scikit-learn's
# digits spans 0.15 to 35 and costs int8 2.5 to 4.7 points of accuracy, docs/compiler.md).
FOLD_SPREAD_NOTE = 10.0


@dataclass
class ImportedModel:
    network: Network
    source: str  # "onnx", "torch" or "torchscript"
    run: Callable  # float32 (n, d_1) -> the original model's outputs, as numpy
    output: str = LOGITS  # LOGITS, SOFTMAX or LOG_SOFTMAX: what `run` returns
    runtime: str = "torch"  # what `run` executes the original model with, for messages


# ------------------------------------------------------------------ shared assembly

@dataclass
class _Step:
    """One operation of the chain, as both importers describe it to the assembler."""

    kind: str  # "linear", "batchnorm", "bias", "scale", "relu", "softmax", "log_softmax",
    #            "sigmoid", "activation" (any other: refused with the retrain hint)
    where: str  # how the user recognises it in error messages: "Gemm node 'fc1'"
    name: str = ""
    weight: np.ndarray = None  # linear: (out, in)
    bias: np.ndarray = None  # linear and bias: (out,)
    bn: tuple = None  # batchnorm: (gamma, beta, mean, var, eps)
    scale: np.ndarray = None  # scale: per-feature factor, or one for all


def fold_batchnorm(weight, bias, gamma, beta, mean, var, eps):
    """W' = W * k, b' = (b - mean) * k + beta with k = gamma / sqrt(var + eps), per output row.

    Computed in float64 and rounded once, so folding adds no more error than storing float32.
    """
    k = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + float(eps))
    w = np.asarray(weight, np.float64) * k[:, None]
    b = ((np.asarray(bias, np.float64) - np.asarray(mean, np.float64)) * k
         + np.asarray(beta, np.float64))
    return w.astype(np.float32), b.astype(np.float32)


def _check_finite(where, what, array, path):
    """One line naming the step and the first bad value: a NaN or Inf weight would train and
    predict garbage on the board (and the float check cannot catch NaN against NaN)."""
    a = np.asarray(array, np.float64)
    if a.size and not np.all(np.isfinite(a)):
        first = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
        at = f" at index {first[0] if len(first) == 1 else list(first)}" if first else ""
        raise UserError(f"{where}: its {what} holds NaN or Inf (first{at}: {a[first]}); the "
                        f"model is broken (a diverged training run?), fix or retrain it", path)


def _affine(step):
    """(s, t) of a batch-norm, bias or scale step read as y = s * x + t, per feature."""
    if step.kind == "batchnorm":
        gamma, beta, mean, var, eps = (np.asarray(v, np.float64) for v in step.bn)
        s = gamma / np.sqrt(var + eps)
        return s.reshape(-1), (beta - mean * s).reshape(-1)
    if step.kind == "bias":
        return np.ones(1), np.asarray(step.bias, np.float64).reshape(-1)
    return np.asarray(step.scale, np.float64).reshape(-1), np.zeros(1)


def _activation_hint(where):
    return (f"{where} is an activation the board does not compute (it applies ReLU between "
            f"layers, and nothing else); retrain the model with ReLU (scikit-learn: "
            f"MLPClassifier(activation='relu'), its default; torch: nn.ReLU)")


def _assemble(steps, supported, dropped, path=None):
    """Build the Network from the steps, enforcing Linear (BN) ReLU ... Linear [softmax].

    `dropped` lists what the importer removed (Dropout, Flatten, Identity) for the notes.
    Every weight, bias and batch-norm statistic must be finite. A per-feature affine map (a
    batch-norm, a bias, a scale) folds into the rows of the linear layer it directly follows, or,
    where no linear layer precedes it (the model's input, after a ReLU), into the columns of the
    linear layer that comes next: an input standardisation (scikit-learn's StandardScaler) is
    one. A final sigmoid on one output unit (a binary classifier) becomes two logits [0, z].
    """
    layers, notes = [], list(dropped)
    names = []  # the linear step of each layer, for messages
    relu_after = []  # per layer: the ReLU step that followed it, or None
    output = LOGITS
    pending = None  # (s, t, wheres): an affine map waiting for the next linear layer's columns

    def fail(message):
        raise UserError(f"{message}; skip2lora compiles a chain Linear, ReLU, ..., Linear "
                        f"(supported: {supported})", path)

    def pending_names():
        return ", ".join(dict.fromkeys(pending[2]))

    for step in steps:
        if step.weight is not None:
            _check_finite(step.where, "weight", step.weight, path)
        if step.bias is not None:
            _check_finite(step.where, "bias", step.bias, path)
        if step.scale is not None:
            _check_finite(step.where, "scale", step.scale, path)
        if step.bn is not None:
            for what, value in zip(("scale (gamma)", "bias (beta)", "running mean",
                                    "running variance", "epsilon"), step.bn):
                _check_finite(step.where, what, value, path)
            if np.any(np.asarray(step.bn[3], np.float64) + float(step.bn[4]) <= 0):
                raise UserError(f"{step.where}: its running variance plus epsilon is not "
                                f"positive, so it cannot be folded; the model is broken", path)

    for i, step in enumerate(steps):
        if output != LOGITS:
            fail(f"{step.where} follows the final {output.replace('_', '')} {steps[i - 1].where}; "
                 f"a softmax is only allowed as the very last operation")
        after_linear = bool(layers) and relu_after[-1] is None  # folds into that layer's rows
        if step.kind == "linear":
            if after_linear:
                fail(f"{step.where} follows {names[-1]} with no ReLU between them (a linear "
                     f"or identity activation: retrain with ReLU, e.g. scikit-learn's "
                     f"MLPClassifier(activation='relu'))")
            w = np.asarray(step.weight, np.float64)
            b = np.zeros(w.shape[0]) if step.bias is None else np.asarray(step.bias, np.float64)
            b = b.reshape(-1)
            if layers and w.shape[1] != layers[-1].d_out:
                fail(f"{step.where} takes {w.shape[1]} inputs but {names[-1]} gives "
                     f"{layers[-1].d_out}")
            if pending is not None:
                s, t, _ = pending
                if s.size not in (1, w.shape[1]) or t.size not in (1, w.shape[1]):
                    fail(f"{pending_names()} has {max(s.size, t.size)} values per sample but "
                         f"{step.where} takes {w.shape[1]} inputs")
                b = b + w @ np.broadcast_to(t, (w.shape[1],))
                w = w * np.broadcast_to(s, (w.shape[1],))[None, :]
                notes.append(f"folded {pending_names()} into {step.where} (W diag(s), b + W t): "
                             f"the compiled model reads the features as they are before it, "
                             f"unscaled")
                spread = np.abs(s[s != 0])
                if spread.size and spread.max() > FOLD_SPREAD_NOTE * spread.min():
                    notes.append(f"the folded factors s span {spread.min():.3g} to "
                                 f"{spread.max():.3g}: int8 weights (one step per row) lose "
                                 f"the precision of the small columns, so compare the int8 "
                                 f"figures with f32 (--test-data shows the accuracy change)")
                pending = None
            layers.append(Dense(w.astype(np.float32), b.astype(np.float32), step.name))
            names.append(step.where)
            relu_after.append(None)
        elif step.kind in ("batchnorm", "bias", "scale"):
            s, t = _affine(step)
            if after_linear:
                layer = layers[-1]
                if max(s.size, t.size) not in (1, layer.d_out):
                    what = "normalises" if step.kind == "batchnorm" else "acts on"
                    fail(f"{step.where} {what} {max(s.size, t.size)} values but {names[-1]} "
                         f"gives {layer.d_out}")
                if step.kind == "batchnorm":
                    layer.weight, layer.bias = fold_batchnorm(layer.weight, layer.bias, *step.bn)
                else:
                    w = np.asarray(layer.weight, np.float64) * s[:, None]
                    b = np.asarray(layer.bias, np.float64) * s + t
                    layer.weight, layer.bias = w.astype(np.float32), b.astype(np.float32)
                if step.kind != "bias":  # a bias after a MatMul is the usual ONNX layer
                    notes.append(f"folded {step.where} into {names[-1]}")
            else:
                width = layers[-1].d_out if layers else None
                if width is not None and max(s.size, t.size) not in (1, width):
                    fail(f"{step.where} acts on {max(s.size, t.size)} values but "
                         f"{relu_after[-1].where} gives {width}")
                if pending is None:
                    pending = (np.ones(1), np.zeros(1), [])
                ps, pt, wheres = pending
                try:
                    pending = (ps * s, pt * s + t, wheres + [step.where])
                except ValueError:  # the two do not broadcast
                    fail(f"{step.where} acts on {max(s.size, t.size)} values but "
                         f"{pending_names()} on {max(ps.size, pt.size)}")
        elif step.kind == "relu":
            if pending is not None:
                fail(f"{step.where} follows {pending_names()}, which can only be folded into a "
                     f"linear layer that comes next")
            if not layers:
                fail(f"{step.where} comes before any linear layer")
            if relu_after[-1] is not None:
                notes.append(f"dropped {step.where}: a second ReLU in a row changes nothing")
            else:
                relu_after[-1] = step
        elif step.kind == "activation":
            fail(_activation_hint(step.where))
        elif step.kind == "sigmoid":
            if i < len(steps) - 1:
                fail(_activation_hint(step.where))
            if not after_linear or pending is not None:
                fail(f"{step.where} does not directly follow a linear layer; a final sigmoid "
                     f"must come right after the last one")
            layer = layers[-1]
            if layer.d_out != 1:
                fail(f"{step.where} squashes each of the {layer.d_out} outputs of {names[-1]} "
                     f"on its own (multi-label); the board trains classes that compete "
                     f"(softmax), so end the model in raw logits or a softmax")
            layer.weight = np.vstack([np.zeros_like(layer.weight), layer.weight])
            layer.bias = np.concatenate([np.zeros_like(layer.bias), layer.bias])
            output = SIGMOID
            notes.append(f"the binary classifier's one logistic unit z ({names[-1]}, then "
                         f"{step.where}) became two logits [0, z]: softmax([0, z]) = "
                         f"[1 - sigmoid(z), sigmoid(z)], so class 1 is predicted exactly when "
                         f"sigmoid(z) > 0.5")
        else:  # softmax / log_softmax
            if pending is not None:
                fail(f"{pending_names()} is not followed by a linear layer to fold it into")
            output = step.kind
            notes.append(f"dropped the trailing {step.where}: the board works on logits, and "
                         f"the predicted class (argmax) is the same")
    if pending is not None:
        fail(f"{pending_names()} is not followed by a linear layer to fold it into")
    if len(layers) < 2:
        found = f"only {names[0]}" if layers else "no linear layer"
        fail(f"found {found}; the model needs at least two linear layers (a hidden layer and "
             f"the output layer)")
    if relu_after[-1] is not None:
        fail(f"the last linear layer {names[-1]} is followed by {relu_after[-1].where}; the "
             f"last layer must give raw logits, so remove that ReLU")
    for layer, where in zip(layers, names):  # folding or a Gemm alpha can overflow float32
        _check_finite(where, "weight (after folding)", layer.weight, path)
        _check_finite(where, "bias (after folding)", layer.bias, path)
    return Network(layers, notes), output


@contextmanager
def _malformed(path, what):
    """A file that loads but whose contents break the walk (a damaged graph: names that are not
    text, tensors whose data does not match their shape) is the user's input, not a bug here:
    one line, not a traceback."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"cannot read it as {what}: it is malformed ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:200]}); save or export it again",
                        path) from None


def _load_optional(module_name, extra):
    try:
        return __import__(module_name)
    except ImportError:
        raise UserError(f"reading this model needs the Python package '{module_name}': "
                        f"pip install 'skip2lora[{extra}]'") from None


# ------------------------------------------------------------------ ONNX

def _onnx_attrs(node):
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


_CONSTANT_NUMBERS = {"value_float": np.float32, "value_floats": np.float32,
                     "value_int": np.int64, "value_ints": np.int64}


def _onnx_constants(graph, path=None):
    """Values known before any input arrives: initializers, Constant nodes, Identity of those."""
    from onnx import numpy_helper

    values = {}
    for t in graph.initializer:
        try:
            values[t.name] = numpy_helper.to_array(t)
        except Exception as exc:  # noqa: BLE001 - its data does not match its dims or type
            raise UserError(f"initializer '{t.name}' is corrupt ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:200]}); export the model again",
                            path) from None
    for node in graph.node:
        if node.op_type == "Constant":
            attrs = _onnx_attrs(node)
            if "value" in attrs:
                values[node.output[0]] = numpy_helper.to_array(attrs["value"])
            for key, dtype in _CONSTANT_NUMBERS.items():
                if key in attrs:
                    values[node.output[0]] = np.asarray(attrs[key], dtype)
        elif node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def _onnx_where(node):
    return f"{node.op_type} node '{node.name or node.output[0]}'"


# What may follow the class scores in a graph with several outputs: a classifier's
# post-processing (skl2onnx writes ArgMax, ArrayFeatureExtractor of the labels, Reshape, Cast,
# ZipMap, and for a binary classifier Sub and Concat into [1 - p, p]). None of it is compiled.
ONNX_HEAD_OPS = ("ArgMax", "ArrayFeatureExtractor", "ZipMap", "Reshape", "Cast", "Identity",
                 "Sub", "Concat", "Softmax", "LogSoftmax", "Squeeze", "Unsqueeze", "Flatten")
# Activations other than ReLU: refused with the hint to retrain with ReLU.
ONNX_ACTIVATIONS = ("Tanh", "LeakyRelu", "Elu", "Selu", "Celu", "Gelu", "Softplus", "Softsign",
                    "HardSigmoid", "HardSwish", "Mish", "PRelu", "ThresholdedRelu", "Clip")


@dataclass
class _OnnxWalk:
    """What _onnx_steps found: the steps, the tensor they end at, what was left out."""

    steps: list
    dropped: list
    graph_input: object  # the input's ValueInfoProto
    scores: str  # the tensor the chain ends at: the graph's output, or where the head starts
    head: list  # the post-processing nodes after `scores` (graphs with several outputs)
    labels: list = None  # the classifier's class labels, if its post-processing names them


def _classifier_head(nodes, consts, start, outputs, path):
    """(trunk nodes, scores tensor, head nodes) of a graph with several outputs.

    The trunk is the plain chain from the input up to the first tensor that is a graph output
    or read by more than one node: a classifier's scores (logits, probabilities), which its
    post-processing turns into a label and a probability table. Every other node must be such
    post-processing, computed from the scores alone, and every output must come from it.
    """
    consumers = {}
    for node in nodes:
        for name in node.input:
            if name and name not in consts:
                consumers.setdefault(name, []).append(node)
    trunk, current = [], start
    while current not in outputs and len(consumers.get(current, ())) == 1:
        node = consumers[current][0]
        if [name for name in node.input if name and name not in consts] != [current]:
            break
        trunk.append(node)
        current = node.output[0]
    in_trunk = {id(node) for node in trunk}
    head = [node for node in nodes if id(node) not in in_trunk]
    produced = {current}
    for node in head:  # graph order is topological in a valid model
        strays = [name for name in node.input
                  if name and name not in consts and name not in produced]
        if node.op_type not in ONNX_HEAD_OPS or strays:
            why = (f"reads '{strays[0]}', which is computed before them"
                   if node.op_type in ONNX_HEAD_OPS else "is not such post-processing")
            raise UserError(f"{_onnx_where(node)}: the graph has {len(outputs)} outputs "
                            f"({', '.join(outputs)}); skip2lora compiles the chain up to a "
                            f"classifier's scores ('{current}' here) and leaves out the "
                            f"post-processing of them ({', '.join(ONNX_HEAD_OPS)}), but this "
                            f"node {why}; export the model with the logits as its one output",
                            path)
        produced.update(name for name in node.output if name)
    missing = [name for name in outputs if name not in produced]
    if missing:
        raise UserError(f"the graph output '{missing[0]}' is not computed from the class "
                        f"scores '{current}'; export the model with the logits as its one "
                        f"output", path)
    return trunk, current, head


def _head_labels(head, consts):
    """The class labels a classifier's post-processing maps the argmax to, or None."""
    for node in head:
        if node.op_type == "ZipMap":
            attrs = _onnx_attrs(node)
            for key in ("classlabels_int64s", "classlabels_strings"):
                if attrs.get(key):
                    return [v.decode() if isinstance(v, bytes) else int(v) for v in attrs[key]]
        if node.op_type == "ArrayFeatureExtractor" and node.input[0] in consts:
            values = np.asarray(consts[node.input[0]]).reshape(-1)
            return [v.decode() if isinstance(v, bytes) else v.item() for v in values]
    return None


def _onnx_steps(graph, path):
    """Walk the graph from its input to its scores and describe each node as a _Step."""
    onnx = _load_optional("onnx", "onnx")
    consts = _onnx_constants(graph, path)
    inputs = [i for i in graph.input if i.name not in consts]
    if len(inputs) != 1:
        raise UserError(f"the graph has {len(inputs)} inputs "
                        f"({', '.join(i.name for i in inputs)}); expected one feature vector", path)
    outputs = [o.name for o in graph.output]
    if not outputs:
        raise UserError("the graph has no outputs; expected one (the logits)", path)
    nodes = [node for node in graph.node if node.output[0] not in consts]  # not Constant & co.
    current = inputs[0].name
    if len(outputs) == 1:
        trunk, scores, head = nodes, outputs[0], []
    else:
        trunk, scores, head = _classifier_head(nodes, consts, current, outputs, path)
    steps, dropped = [], []

    def fail(node, message):
        raise UserError(f"{_onnx_where(node)}: {message}; supported ONNX ops: {ONNX_SUPPORTED}",
                        path)

    def const(node, index, what):
        if index >= len(node.input) or node.input[index] not in consts:
            fail(node, f"its {what} is not a constant (initializer or Constant node)")
        return np.asarray(consts[node.input[index]])

    for node in trunk:
        live = [name for name in node.input if name and name not in consts]
        if live != [current]:
            if len(live) > 1:
                fail(node, f"it combines {len(live)} computed tensors ({', '.join(live)}), as a "
                           f"residual or branching connection does; only a plain chain is "
                           f"supported")
            fail(node, f"it reads '{live[0] if live else '(constants only)'}' instead of the "
                       f"output of the previous node '{current}'; only a plain chain is supported")
        op, attrs, where = node.op_type, _onnx_attrs(node), _onnx_where(node)
        name = node.name or node.output[0]
        if op == "Gemm":
            if node.input[0] != current or attrs.get("transA", 0):
                fail(node, "the features must be its first input, not transposed (transA=0)")
            b = const(node, 1, "weight B")
            if b.ndim != 2:
                fail(node, f"its weight has shape {b.shape}; expected a 2-D matrix")
            w = (b if attrs.get("transB", 0) else b.T).astype(np.float64) * attrs.get("alpha", 1.0)
            steps.append(_Step("linear", where, name, w))
            if len(node.input) > 2 and node.input[2]:
                c = const(node, 2, "bias C").astype(np.float64) * attrs.get("beta", 1.0)
                steps.append(_Step("bias", where, name, bias=c.reshape(-1)))
        elif op == "MatMul":
            if node.input[0] != current:
                fail(node, "the features must be its first input (x @ W)")
            w = const(node, 1, "weight")
            if w.ndim != 2:
                fail(node, f"its weight has shape {w.shape}; expected a 2-D matrix")
            steps.append(_Step("linear", where, name, w.T))
        elif op in ("Add", "Sub", "Mul", "Div"):
            first = node.input[0] == current
            c = const(node, 1 if first else 0, "other operand").astype(np.float64)
            if c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1):
                fail(node, f"its constant has shape {c.shape}; expected a scalar or one value "
                           f"per feature, (d,) or (1, d)")
            c = c.reshape(-1)
            if op == "Add":
                steps.append(_Step("bias", where, name, bias=c))
            elif op == "Mul":
                steps.append(_Step("scale", where, name, scale=c))
            elif op == "Sub" and first:  # x - c
                steps.append(_Step("bias", where, name, bias=-c))
            elif op == "Sub":  # c - x
                steps += [_Step("scale", where, name, scale=-np.ones(1)),
                          _Step("bias", where, name, bias=c)]
            elif not first:
                fail(node, "it divides a constant by the features, which is not a linear map")
            else:
                with np.errstate(divide="ignore"):
                    steps.append(_Step("scale", where, name, scale=1.0 / c))
        elif op == "Scaler":  # ai.onnx.ml: (x - offset) * scale, e.g. a StandardScaler
            offset = np.asarray(attrs.get("offset", [0.0]), np.float64).reshape(-1)
            factor = np.asarray(attrs.get("scale", [1.0]), np.float64).reshape(-1)
            steps += [_Step("bias", where, name, bias=-offset),
                      _Step("scale", where, name, scale=factor)]
        elif op == "BatchNormalization":
            if attrs.get("training_mode", 0):
                fail(node, "it is exported in training mode; export the model after model.eval()")
            if any(o for o in node.output[1:]):
                fail(node, "its running-statistics outputs are used (training-mode export)")
            gamma, beta, mean, var = (const(node, k, w) for k, w in
                                      enumerate(("scale", "bias", "mean", "var"), start=1))
            steps.append(_Step("batchnorm", where, name,
                               bn=(gamma, beta, mean, var, attrs.get("epsilon", 1e-5))))
        elif op == "Relu":
            steps.append(_Step("relu", where, name))
        elif op == "Sigmoid":
            steps.append(_Step("sigmoid", where, name))
        elif op in ONNX_ACTIVATIONS:
            steps.append(_Step("activation", where, name))
        elif op in ("Softmax", "LogSoftmax"):
            if attrs.get("axis", -1 if op == "Softmax" else 1) not in (1, -1):
                fail(node, f"it runs over axis {attrs['axis']}, not over the classes (axis 1)")
            steps.append(_Step("softmax" if op == "Softmax" else "log_softmax", where, name))
        elif op == "Cast":
            to = attrs.get("to")
            if to not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
                fail(node, f"it casts to {onnx.TensorProto.DataType.Name(to)}, which changes the "
                           f"values; only a cast to float or double is dropped")
            dropped.append(f"dropped {where} (to {onnx.TensorProto.DataType.Name(to).lower()}: "
                           f"no effect on float features)")
        elif op in ("Flatten", "Identity", "Dropout"):
            if op == "Flatten" and attrs.get("axis", 1) != 1:
                fail(node, f"it flattens from axis {attrs['axis']}; only axis 1 keeps the batch")
            if op == "Dropout" and len(node.output) > 1 and node.output[1]:
                fail(node, "its mask output is used (training-mode export)")
            dropped.append(f"dropped {where} (no effect at inference)")
        else:
            fail(node, "this op is not supported")
        current = node.output[0]
    if current != scores:
        raise UserError(f"the graph output '{scores}' is not the end of the chain "
                        f"that starts at the input (which ends at '{current}')", path)
    return _OnnxWalk(steps, dropped, inputs[0], scores, head,
                     _head_labels(head, consts) if head else None)


def _head_notes(walk, outputs, n_classes):
    """What the compiled model leaves out of a classifier graph, and how its classes map."""
    ops = ", ".join(dict.fromkeys(node.op_type for node in walk.head))
    notes = [f"took the class scores at '{walk.scores}' and left out the post-processing after "
             f"them ({ops}), which gives the outputs {', '.join(outputs)}"]
    labels = walk.labels
    if labels is not None and list(labels) != list(range(n_classes)):
        shown = ", ".join(map(str, labels[:12])) + (", ..." if len(labels) > 12 else "")
        notes.append(f"the classifier's labels are [{shown}]; the board numbers the classes "
                     f"0..{n_classes - 1} in that order, so give the data's labels as those "
                     f"indexes")
    return notes


def _runnable(onnx, proto, walk):
    """The model bytes with the scores tensor as a graph output, so onnxruntime can return it."""
    if walk.scores in {o.name for o in proto.graph.output}:
        return proto.SerializeToString()
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    info = None
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
        info = next((v for v in inferred.graph.value_info if v.name == walk.scores), None)
    except Exception:  # noqa: BLE001 - inference is a nicety; the type is known anyway
        pass
    if info is None:
        info = onnx.helper.make_tensor_value_info(
            walk.scores, walk.graph_input.type.tensor_type.elem_type, None)
    copy.graph.output.append(info)
    return copy.SerializeToString()


def import_onnx(path):
    onnx = _load_optional("onnx", "onnx")
    try:
        proto = onnx.load(str(path))
    except FileNotFoundError:
        raise UserError("no such file; check the path", path) from None
    except Exception as exc:  # protobuf raises its own DecodeError and friends
        raise UserError(f"cannot read it as an ONNX model ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else 'invalid protobuf'})",
                        path) from None
    if not proto.graph.node:
        raise UserError("cannot read it as an ONNX model (the graph has no nodes)", path)
    with _malformed(path, "an ONNX model"):
        walk = _onnx_steps(proto.graph, path)
        network, output = _assemble(walk.steps, ONNX_SUPPORTED, walk.dropped, path)
        if walk.head:
            outputs = [o.name for o in proto.graph.output]
            network.notes.extend(_head_notes(walk, outputs, network.n_classes))
        serialized = _runnable(onnx, proto, walk)
    elem_type = walk.graph_input.type.tensor_type.elem_type
    if elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        raise UserError(f"the input '{walk.graph_input.name}' has element type "
                        f"{onnx.TensorProto.DataType.Name(elem_type)}; expected float", path)
    sigmoid = output == SIGMOID
    runner = []  # one onnxruntime session, made on the first run

    def run(x):
        """The original's scores for x (a fixed batch size is fed in chunks of that size); a
        binary classifier's sigmoid p comes back as [1 - p, p], the softmax of [0, z]."""
        if not runner:
            runner.append(OnnxRunner(serialized, path, " to check the compiled model"))
        scores = np.asarray(runner[0].run(x, [walk.scores])[0], np.float64)
        return np.concatenate([1.0 - scores, scores], axis=1) if sigmoid else scores

    return ImportedModel(network, "onnx", run, SOFTMAX if sigmoid else output, "onnxruntime")


# ------------------------------------------------------------------ torch

def _torch_type(module):
    """The class name the user wrote; TorchScript keeps it as original_name."""
    return getattr(module, "original_name", None) or type(module).__name__


def _torch_kind(module, nn):
    """The supported layer this module is, or None: subclasses that override forward() are not,
    since their computation is no longer the one the importer would compile."""
    if hasattr(module, "original_name"):  # TorchScript: only the name survives
        return module.original_name if module.original_name in _TORCH_KINDS else None
    for name in _TORCH_KINDS:
        cls = getattr(nn, name)
        if isinstance(module, cls) and type(module).forward is cls.forward:
            return name
    return None


_TORCH_KINDS = ("Sequential", "Linear", "ReLU", "BatchNorm1d", "Dropout", "Flatten", "Identity",
                "Softmax", "LogSoftmax", "Sigmoid")
# Activations other than ReLU: refused with the hint to retrain with ReLU.
_TORCH_ACTIVATIONS = ("Tanh", "LeakyReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish",
                      "Softplus", "Softsign", "Hardtanh", "Hardsigmoid", "Hardswish", "PReLU",
                      "ReLU6", "RReLU", "LogSigmoid", "Tanhshrink")


def _script_constant(module, attr, op, index):
    """An attribute of a TorchScript module; traced modules inline it into their graph instead."""
    try:
        return getattr(module, attr)
    except AttributeError:
        pass
    for node in module.graph.nodes():
        if node.kind() == op:
            return node.inputsAt(index).toIValue()
    return None


def _numpy(tensor):
    return None if tensor is None else tensor.detach().cpu().double().numpy()


def _torch_steps(module, path, nn, prefix="", steps=None, dropped=None):
    """Flatten (possibly nested) Sequentials into steps, in registration order."""
    steps = [] if steps is None else steps
    dropped = [] if dropped is None else dropped
    for child_name, child in module.named_children():
        qualified = f"{prefix}{child_name}"
        kind = _torch_kind(child, nn)
        where = f"{_torch_type(child)} module '{qualified}'"
        if kind is None and _torch_type(child) in _TORCH_ACTIVATIONS:
            steps.append(_Step("activation", where, qualified))  # refused with its hint
            continue
        if kind is None:
            raise UserError(f"{where} is not supported (a custom module or a layer type "
                            f"skip2lora does not compile); supported: {TORCH_SUPPORTED}. For a "
                            f"custom forward(), export the model to ONNX instead", path)
        if kind == "Sequential":
            _torch_steps(child, path, nn, qualified + ".", steps, dropped)
        elif kind == "Linear":
            steps.append(_Step("linear", where, qualified, _numpy(child.weight),
                               _numpy(child.bias)))
        elif kind == "BatchNorm1d":
            if child.running_mean is None:
                raise UserError(f"{where} has track_running_stats=False, so it normalises with "
                                f"the statistics of each batch and cannot be folded", path)
            features = child.running_mean.shape[0]
            gamma = _numpy(child.weight) if child.weight is not None else np.ones(features)
            beta = _numpy(child.bias) if child.bias is not None else np.zeros(features)
            eps = _script_constant(child, "eps", "aten::batch_norm", 7)
            steps.append(_Step("batchnorm", where, qualified,
                               bn=(gamma, beta, _numpy(child.running_mean),
                                   _numpy(child.running_var), 1e-5 if eps is None else eps)))
        elif kind == "ReLU":
            steps.append(_Step("relu", where, qualified))
        elif kind == "Sigmoid":
            steps.append(_Step("sigmoid", where, qualified))
        elif kind in ("Softmax", "LogSoftmax"):
            op = "aten::softmax" if kind == "Softmax" else "aten::log_softmax"
            dim = _script_constant(child, "dim", op, 1)
            if dim not in (None, 1, -1):
                raise UserError(f"{where} runs over dim {dim}, not over the classes (dim 1)", path)
            steps.append(_Step("softmax" if kind == "Softmax" else "log_softmax", where, qualified))
        else:  # Dropout, Flatten, Identity
            dropped.append(f"dropped {where} (no effect at inference)")
    return steps, dropped


def _load_torch_file(torch, path):
    """TorchScript archives hold constants.pkl; anything else is a torch.save pickle.

    torch.load runs with weights_only=False because the file is the user's own model that they
    ask us to compile: unpickling it executes no more code than their own training script did,
    and weights_only=True cannot rebuild an nn.Module at all.
    """
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            scripted = any(n.endswith("constants.pkl") for n in archive.namelist())
        if scripted:
            return torch.jit.load(str(path), map_location="cpu"), "torchscript"
    return torch.load(str(path), map_location="cpu", weights_only=False), "torch"


def import_torch(path):
    torch = _load_optional("torch", "torch")
    nn = torch.nn
    if not Path(path).is_file():
        raise UserError("no such file; check the path", path)
    try:
        module, source = _load_torch_file(torch, path)
    except (AttributeError, ModuleNotFoundError) as exc:
        raise UserError(f"cannot unpickle the model: {exc}; torch.save(model) stores the class "
                        f"by reference, so its defining module must be importable here (or "
                        f"export to ONNX or TorchScript)", path) from None
    except Exception as exc:
        raise UserError(f"cannot read it as a PyTorch model ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})", path) from None
    if not isinstance(module, (nn.Module, torch.jit.ScriptModule)):
        hint = (" (a state_dict: save the module itself with torch.save(model))"
                if isinstance(module, dict) else "")
        raise UserError(f"the file holds a {type(module).__name__}, not a module{hint}", path)
    with _malformed(path, "a PyTorch model"):
        kind = _torch_kind(module, nn)
        if kind == "Sequential":
            steps, dropped = _torch_steps(module, path, nn)
        elif kind is not None:  # a bare layer: let the assembler say what is missing
            wrapper = nn.Sequential()
            wrapper.add_module(_torch_type(module), module)
            steps, dropped = _torch_steps(wrapper, path, nn)
        else:
            raise UserError(f"the model is a {_torch_type(module)}, whose forward() skip2lora "
                            f"cannot follow; save an nn.Sequential (supported: "
                            f"{TORCH_SUPPORTED}) or export the model to ONNX", path)
        network, output = _assemble(steps, TORCH_SUPPORTED, dropped, path)
    if module.training:
        network.notes.append("the model was saved in training mode; compiled and checked in "
                             "eval mode (BatchNorm running statistics, no Dropout)")
    module.eval()
    params = list(module.parameters())
    dtype = params[0].dtype if params else torch.float32

    sigmoid = output == SIGMOID

    def run(x):
        """The module's outputs for x; a binary classifier's sigmoid p comes back as [1 - p, p],
        the softmax of the two logits [0, z] it was compiled to."""
        with torch.no_grad():
            out = module(torch.from_numpy(np.asarray(x)).to(dtype)).double().numpy()
        return np.concatenate([1.0 - out, out], axis=1) if sigmoid else out

    return ImportedModel(network, source, run, SOFTMAX if sigmoid else output,
                         "torch.jit" if source == "torchscript" else "torch")


def import_model(path):
    """Pick the importer by extension: formats cannot be told apart reliably by content alone."""
    suffix = Path(path).suffix.lower()
    if suffix in ONNX_EXTENSIONS:
        return import_onnx(path)
    if suffix in TORCH_EXTENSIONS:
        return import_torch(path)
    raise UserError(f"unknown model type '{suffix or '(no extension)'}'; expected an ONNX file "
                    f"(.onnx) or a PyTorch file ({', '.join(TORCH_EXTENSIONS)}) saved with "
                    f"torch.save(model) or torch.jit.save", path)
