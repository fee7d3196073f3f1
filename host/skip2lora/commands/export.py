"""`skip2lora export`: a compiled model and its trained adapters as one ONNX file (and PEFT).

The adapters that can be folded into a weight matrix exactly are merged; the others become
branches of the graph (docs/export.md). The written file is run with onnxruntime against the
numpy model before it is kept, so a wrong export never reaches the user.
"""
from pathlib import Path

from skip2lora.model import export, peft
from skip2lora.errors import UserError
from skip2lora.model.formats import read_model


def register(subparsers):
    parser = subparsers.add_parser(
        "export", help="export a .s2lm model with its adapters to ONNX (and PEFT files)",
        description="Build one ONNX graph (opset 17, input 'input' [batch, d1], output "
                    "'logits') of the frozen model with the trained adapters: dense deltas and "
                    "adapters on the last layer's input are merged into the weights, the other "
                    "skip adapters become branches summed into the logits, parallel LoRA "
                    "adapters become branches before their layer's ReLU.")
    parser.add_argument("model", help="the compiled model (.s2lm) the adapters were trained on")
    parser.add_argument("--adapters", metavar="DIR_OR_FILE",
                        help="the .s2la adapter file, or a directory holding adapters.s2la or "
                             "the PEFT files (adapter_config.json + adapter_model.safetensors); "
                             "without it the frozen model is exported")
    parser.add_argument("-o", "--output", help="the .onnx file to write")
    parser.add_argument("--peft", metavar="DIR",
                        help="also write the adapters as PEFT-style files in DIR "
                             "(adapter_config.json + adapter_model.safetensors)")
    parser.add_argument("--no-merge", action="store_true",
                        help="keep adapters on the last layer's input as branches instead of "
                             "merging them into its weights (dense deltas are always merged)")
    parser.set_defaults(run=run)


def run(args):
    if not args.output and not args.peft:
        raise UserError("nothing to write: give -o OUT.onnx, --peft DIR, or both")
    if args.peft and not args.adapters:
        raise UserError("--peft writes adapters: give them with --adapters DIR_OR_FILE")
    if args.output and Path(args.output).suffix.lower() != ".onnx":
        raise UserError("the output must end in .onnx", args.output)
    model = read_model(args.model)
    dims = model.dims
    print(f"model: {args.model} ({'-'.join(map(str, dims))}, "
          f"{'int8' if model.layers[0].scale is not None else 'f32'}, "
          f"file CRC 0x{model.file_crc:08x})")
    adapters = None
    if args.adapters:
        adapters, source = export.resolve_adapters(args.adapters)
        export.check_adapters(model, adapters, args.model, source)
        print(f"adapters: {source} ({adapters.method}, {len(adapters.adapters)} adapters, "
              f"rank {adapters.rank}, alpha {adapters.alpha:g}, {adapters.epochs_done} epochs)")
    if args.output:
        report = export.export_onnx(model, adapters, args.output, merge=not args.no_merge,
                                    model_name=args.model,
                                    adapters_name=source if adapters is not None else None)
        for line in report.merged:
            print(f"  merged: {line}")
        for line in report.branches:
            print(f"  branch: {line}")
        if adapters is not None and not report.merged and not report.branches:
            print("  (the adapter file holds no adapters)")
        print(f"onnx.checker: ok; onnxruntime vs numpy on 256 random inputs: max abs error "
              f"{report.max_abs_error:.3g} ({report.relative_error:.3g} of the logit scale)")
        size = Path(args.output).stat().st_size
        print(f"wrote {args.output}: {size} bytes, opset {export.OPSET}, input "
              f"'{export.INPUT}' [batch, {dims[0]}], output '{export.OUTPUT}' "
              f"[batch, {dims[-1]}]")
    if args.peft:
        config, weights = peft.write_peft_dir(adapters, args.peft, base_model=args.model)
        print(f"wrote {config} and {weights}")
    return 0
