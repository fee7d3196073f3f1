"""`skip2lora eval`: accuracy and confusion matrix of a model (with adapters) on labelled data."""
from skip2lora.model import evaluate


def register(subparsers):
    parser = subparsers.add_parser(
        "eval", help="accuracy and confusion matrix of a model on labelled data",
        description="Run a compiled .s2lm (with optional trained adapters) or an .onnx model on "
                    "labelled samples and print the accuracy and the confusion matrix.")
    parser.add_argument("model", help="the model: .s2lm, or .onnx (e.g. from `skip2lora export`)")
    parser.add_argument("--adapters", metavar="DIR_OR_FILE",
                        help="trained adapters for a .s2lm: the .s2la file, or a directory "
                             "holding adapters.s2la or the PEFT files")
    parser.add_argument("--data", required=True,
                        help="labelled samples: .npz (arrays x, y), .csv (label in the last "
                             "column, optional header line) or .s2ld")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.set_defaults(run=run)


def run(args):
    clf, result = evaluate.evaluate(args.model, args.data, args.adapters)
    print(f"model: {clf.description}")
    print(f"data: {args.data} ({result.n} samples, {clf.n_features} features)")
    print(f"accuracy: {100 * result.accuracy:.2f} % ({result.correct} of n = {result.n})")
    print("confusion matrix (rows: true class, columns: predicted class):")
    for line in evaluate.format_confusion(result.confusion):
        print(f"  {line}")
    if args.json:
        record = {"model": str(args.model), "adapters": args.adapters, "data": str(args.data),
                  **result.to_dict()}
        evaluate.write_json(args.json, record)
        print(f"wrote {args.json}")
    return 0
