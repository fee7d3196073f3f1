"""Trained adapters as Hugging Face PEFT-style files, and back (layout: docs/export.md).

A directory holds `adapter_config.json` (the standard LoRA fields plus a "skip2lora" section)
and `adapter_model.safetensors` (float32 tensors under PEFT key names). The `.s2la` file stays
the source of truth: everything in it is written here, so `load_peft_dir(write_peft_dir(af))`
gives back the same AdapterFile, arrays bit for bit and the same `file_crc`.

PEFT key names address one low-rank pair per module, so a layer may carry at most one low-rank
adapter (skip or parallel) plus at most one dense delta. Every skip2lora method writes at most
that; a hand-made file with more is refused with a message.
"""
import json
from pathlib import Path

import numpy as np

from skip2lora import __version__
from skip2lora.errors import UserError
from skip2lora.model.formats import (
    KIND_DELTA, KIND_PARALLEL, KIND_SKIP, MAX_CLASSES, MAX_RANK, METHOD_CODES, Adapter,
    AdapterFile, crc32, encode_adapters)
from skip2lora.model.formats import write_atomic  # temp file, fsync, os.replace

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
KEY_PREFIX = "base_model.model."
FORMAT_VERSION = 1  # of the "skip2lora" section of adapter_config.json

KIND_NAMES = {KIND_SKIP: "skip", KIND_PARALLEL: "parallel", KIND_DELTA: "delta"}
KIND_CODES = {v: k for k, v in KIND_NAMES.items()}
KIND_MEANING = {
    "skip": "y += (lora_alpha/r) * B A x_(layer+1), added to the final logits",
    "parallel": "layer output W x + b + (lora_alpha/r) * B A x, before the ReLU",
    "delta": "layer weight W + delta.weight, bias b + delta.bias",
}


def module_name(layer):
    """The name of layer i in target_modules and in the tensor keys."""
    return f"layers.{layer}"


def tensor_keys(layer, kind):
    """(key of A, key of B) in adapter_model.safetensors for one adapter."""
    base = f"{KEY_PREFIX}{module_name(layer)}"
    if kind == KIND_DELTA:
        return f"{base}.delta.weight", f"{base}.delta.bias"
    return f"{base}.lora_A.weight", f"{base}.lora_B.weight"


def _safetensors_numpy():
    try:
        import safetensors.numpy as st
    except ImportError:
        raise UserError("PEFT adapter files need the Python package 'safetensors': "
                        "pip install safetensors") from None
    return st


def _check_writable(af):
    seen = set()
    for a in af.adapters:
        if a.kind not in KIND_NAMES:
            raise UserError(f"adapter on layer {a.layer} has kind {a.kind}, not one of "
                            f"0 skip, 1 parallel, 2 delta")
        slot = (a.layer, "delta" if a.kind == KIND_DELTA else "lora")
        if slot in seen:
            raise UserError(f"layer {a.layer} has more than one "
                            f"{'dense delta' if slot[1] == 'delta' else 'low-rank adapter'}; "
                            f"PEFT key names hold one per layer (no skip2lora method writes "
                            f"more)")
        seen.add(slot)
    if af.method not in METHOD_CODES:
        raise UserError(f"unknown method {af.method!r}; one of {', '.join(METHOD_CODES)}")


def peft_config(af, base_model=None, board=None):
    """The adapter_config.json contents for an AdapterFile; board: the facts of the board that
    trained it (port, unique id, what it is), kept in the skip2lora section when given."""
    modules = []
    for a in af.adapters:
        if module_name(a.layer) not in modules:
            modules.append(module_name(a.layer))
    return {
        "peft_type": "LORA",
        "task_type": None,
        "r": int(af.rank),
        "lora_alpha": float(af.alpha),
        "target_modules": modules,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "base_model_name_or_path": base_model,
        "skip2lora": {
            "format_version": FORMAT_VERSION,
            "created_by": f"skip2lora {__version__}",
            "method": af.method,
            "model_crc": f"0x{af.model_crc:08x}",
            "base_model_file": base_model,
            "n_classes": int(af.n_classes),
            "epochs_done": int(af.epochs_done),
            "scaling": float(af.scaling),
            "kinds": {k: KIND_MEANING[k] for k in sorted({KIND_NAMES[a.kind]
                                                          for a in af.adapters})},
            "adapters": [
                {"module": module_name(a.layer), "layer": int(a.layer),
                 "kind": KIND_NAMES[a.kind],
                 "reads": f"x{a.layer + 1}",
                 "adds_to": {KIND_SKIP: "logits", KIND_PARALLEL: module_name(a.layer),
                             KIND_DELTA: f"{module_name(a.layer)}.weight"}[a.kind],
                 "keys": list(tensor_keys(a.layer, a.kind))}
                for a in af.adapters],
            **({} if board is None else {"board": board}),
        },
    }


def peft_tensors(af):
    """The arrays of adapter_model.safetensors, float32, under their PEFT keys."""
    tensors = {}
    for a in af.adapters:
        key_a, key_b = tensor_keys(a.layer, a.kind)
        A = np.ascontiguousarray(np.atleast_2d(np.asarray(a.A, np.float32)))
        B = np.asarray(a.B, np.float32)
        B = np.ascontiguousarray(B.reshape(-1) if a.kind == KIND_DELTA else
                                 B.reshape(len(B), -1))
        tensors[key_a], tensors[key_b] = A, B
    return tensors


def write_peft_dir(af, directory, base_model=None, board=None):
    """Write af as adapter_config.json + adapter_model.safetensors in directory (created).

    base_model: the name of the .s2lm the adapters belong to, recorded in the config. The
    weights are written first and the config last, each atomically; board: as peft_config's.
    Returns the two paths.
    """
    st = _safetensors_numpy()
    _check_writable(af)
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserError("exists and is not a directory; pass a directory for the PEFT files",
                        directory)
    base_model = None if base_model is None else Path(base_model).name
    try:
        directory.mkdir(parents=True, exist_ok=True)
        weights, config = directory / WEIGHTS_NAME, directory / CONFIG_NAME
        metadata = {"format": "pt", "skip2lora_method": af.method,
                    "skip2lora_model_crc": f"0x{af.model_crc:08x}"}
        write_atomic(weights, st.save(peft_tensors(af), metadata))
        text = json.dumps(peft_config(af, base_model, board), indent=2) + "\n"
        write_atomic(config, text.encode("utf-8"))
    except OSError as exc:
        raise UserError(f"cannot write the PEFT files: {exc.strerror or exc}", directory) from None
    return config, weights


# ---------------------------------------------------------------- reading back

def _config_error(path, message):
    return UserError(f"{message}; write it again with skip2lora (the .s2la adapter file "
                     f"converts with peft.write_peft_dir)", path)


def _read_config(path):
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"no {CONFIG_NAME} here; pass a directory written by skip2lora "
                        f"(adapter_config.json + adapter_model.safetensors) or the .s2la file",
                        path.parent) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read it ({exc})", path) from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _config_error(path, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(config, dict):
        raise _config_error(path, "not a JSON object")
    if config.get("peft_type") != "LORA":
        raise _config_error(path, f"peft_type is {config.get('peft_type')!r}, expected 'LORA'")
    section = config.get("skip2lora")
    if not isinstance(section, dict):
        raise UserError("has no 'skip2lora' section, so it was not written by skip2lora: only "
                        "skip2lora's own PEFT files can be read back (they record the model CRC "
                        "and which adapters feed the logits)", path)
    if section.get("format_version") != FORMAT_VERSION:
        raise _config_error(path, f"skip2lora format_version {section.get('format_version')!r} "
                                  f"is not {FORMAT_VERSION}")
    return config, section


def _field(config, name, kind, path, section=False):
    value = config.get(name)
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if not ok:
        where = f"skip2lora.{name}" if section else name
        raise _config_error(path, f"field {where} is {value!r}, expected "
                                  f"{'a number' if kind == (int, float) else kind.__name__}")
    return value


def _parse_crc(value, path):
    try:
        crc = int(value, 16) if isinstance(value, str) else value
        if isinstance(crc, int) and not isinstance(crc, bool) and 0 <= crc <= 0xFFFFFFFF:
            return crc
    except ValueError:
        pass
    raise _config_error(path, f"skip2lora.model_crc {value!r} is not a 32-bit CRC like "
                              f"'0x1a2b3c4d'")


def load_peft_dir(directory):
    """The AdapterFile written by write_peft_dir in directory (file_crc: that of its .s2la)."""
    st = _safetensors_numpy()
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError("no such directory; pass the directory holding adapter_config.json "
                        "and adapter_model.safetensors", directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    config, section = _read_config(config_path)
    rank = _field(config, "r", int, config_path)
    alpha = float(_field(config, "lora_alpha", (int, float), config_path))
    method = section.get("method")
    if method not in METHOD_CODES:
        raise _config_error(config_path, f"skip2lora.method {method!r} is not one of "
                                         f"{', '.join(METHOD_CODES)}")
    n_classes = _field(section, "n_classes", int, config_path, True)
    epochs = _field(section, "epochs_done", int, config_path, True)
    model_crc = _parse_crc(section.get("model_crc"), config_path)
    if not 1 <= rank <= MAX_RANK or not 2 <= n_classes <= MAX_CLASSES or epochs < 0:
        raise _config_error(config_path, f"r = {rank}, n_classes = {n_classes} or epochs_done "
                                         f"= {epochs} is outside 1..{MAX_RANK}, "
                                         f"2..{MAX_CLASSES}, >= 0")
    if not np.isfinite(alpha):
        raise _config_error(config_path, "lora_alpha is not a finite number")
    entries = section.get("adapters")
    if not isinstance(entries, list):
        raise _config_error(config_path, "skip2lora.adapters is not a list")

    if not weights_path.is_file():
        raise UserError(f"missing; the PEFT directory needs {WEIGHTS_NAME} next to "
                        f"{CONFIG_NAME} (write both again with skip2lora)", weights_path)
    try:
        tensors = st.load_file(str(weights_path))
    except Exception as exc:  # safetensors raises its own error types, and OSError
        raise UserError(f"cannot read it as safetensors ({' '.join(str(exc).split())}); "
                        f"write it again with skip2lora", weights_path) from None

    adapters, used = [], set()
    for n, entry in enumerate(entries):
        if (not isinstance(entry, dict) or entry.get("kind") not in KIND_CODES
                or not isinstance(entry.get("layer"), int) or isinstance(entry["layer"], bool)
                or not 0 <= entry["layer"] < 255):
            raise _config_error(config_path, f"skip2lora.adapters[{n}] = {entry!r} needs a "
                                             f"layer index and a kind (skip, parallel, delta)")
        layer, kind = entry["layer"], KIND_CODES[entry["kind"]]
        arrays = []
        for key in tensor_keys(layer, kind):
            if key not in tensors:
                raise UserError(f"lacks the tensor {key} that {CONFIG_NAME} lists; the two "
                                f"files do not belong together: write both again",
                                weights_path)
            used.add(key)
            value = tensors[key]
            if value.dtype.kind != "f":
                raise UserError(f"tensor {key} has dtype {value.dtype}, expected float32",
                                weights_path)
            if not np.all(np.isfinite(value)):
                raise UserError(f"tensor {key} holds NaN or Inf", weights_path)
            arrays.append(np.asarray(value, np.float32))
        A, B = arrays
        if kind == KIND_DELTA:
            ok = A.ndim == 2 and B.ndim == 1 and B.shape[0] == A.shape[0]
            B = B.reshape(-1, 1)
        else:
            ok = A.ndim == 2 and B.ndim == 2 and A.shape[0] == B.shape[1] == rank
        if not ok or (kind == KIND_SKIP and B.shape[0] != n_classes):
            raise UserError(f"tensors of {module_name(layer)} ({entry['kind']}) have shapes "
                            f"{tensors[tensor_keys(layer, kind)[0]].shape} and "
                            f"{tensors[tensor_keys(layer, kind)[1]].shape}, which do not fit "
                            f"r = {rank} and {n_classes} classes from {CONFIG_NAME}",
                            weights_path)
        adapters.append(Adapter(layer, kind, A, B))
    extra = sorted(set(tensors) - used)
    if extra:
        raise UserError(f"holds tensor(s) {', '.join(extra)} that {CONFIG_NAME} does not list; "
                        f"the two files do not belong together: write both again", weights_path)

    af = AdapterFile(model_crc, rank, n_classes, alpha, adapters, epochs, method)
    try:
        data = encode_adapters(af)
    except Exception as exc:  # struct range errors: values no .s2la could hold
        raise _config_error(config_path, f"its values do not fit the .s2la format ({exc})") \
            from None
    af.file_crc = crc32(data[:-4])
    return af
