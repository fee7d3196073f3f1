"""The one place a fine-tuning setting is defined.

Host reference, `skip2lora finetune`/`compile` options and the board's defaults all read this
module (the board through device/s2l/config.py, which tools/write_device_config.py writes from
it), so a default or a method name cannot differ between them, and a new option is one field
here plus its use on the board. Each field's help is the CLI's help text, as in PEFT's
LoraConfig.
"""
from dataclasses import dataclass, field

# Method names in the order of their code in the .s2la header (docs/formats.md).
METHODS = ("skip2lora", "skip-lora", "lora-all", "lora-last", "ft-last", "ft-bias", "ft-all")
SKIP_METHODS = ("skip2lora", "skip-lora")  # adapters read x_i and add to the logits
BOARD_METHODS = ("skip2lora", "skip-lora", "lora-all", "ft-last")  # what the board trains

# Adapter kinds of the .s2la format (docs/formats.md, "Trained adapters").
KIND_SKIP, KIND_PARALLEL, KIND_DELTA = 0, 1, 2

BACKENDS = ("auto", "thumb", "viper", "ulab", "python", "float")  # the board's arithmetic
DATASET_DTYPES = ("int8", "f32")
# `skip2lora finetune`'s --lr default: the host chooses lr for the data being uploaded
# (host/skip2lora/training/step_size.py) and sends the board a number. FinetuneConfig.lr is
# the number the board uses when s2l.job.finetune is called without one.
LR_AUTO = "auto"


@dataclass
class FinetuneConfig:
    """What a user chooses; defaults are the paper's Skip2-LoRA with s = 1."""

    method: str = field(default="skip2lora", metadata={
        "help": "what to train: Skip2-LoRA, Skip-LoRA (no cache), LoRA on every or the last "
                "layer, or fine-tuning of weights", "choices": METHODS})
    rank: int = field(default=4, metadata={"help": "adapter rank r"})
    alpha: float = field(default=None, metadata={
        "help": "LoRA alpha; adapters are scaled by alpha/r (default: r, scale 1)"})
    lr: float = field(default=0.01, metadata={
        "help": "SGD learning rate, or auto: chosen on the host by training the method with "
                "each lr of a small grid on a held-out split of the data"})
    epochs: int = field(default=20, metadata={
        "help": "epochs to train (in total: with --resume, counting those already done)"})
    batch_size: int = field(default=1, metadata={"help": "samples per SGD step"})
    momentum: float = field(default=0.0, metadata={
        "help": "SGD momentum (the board's fixed-point path takes 0 only)"})
    seed: int = field(default=0, metadata={
        "help": "seed of the adapters' initial values and of the shuffle (XorShift32)"})
    targets: object = field(default="all", metadata={
        "help": "layer inputs that get a skip adapter: all (x1..xL), hidden (x2..xL, "
                "cheaper), or 0-based layer indexes like 0,2"})
    shuffle: bool = field(default=True, metadata={"help": "reshuffle the samples every epoch"})
    backend: str = field(default="auto", metadata={
        "help": "board arithmetic: fixed-point thumb (Cortex-M inline assembler, fastest), "
                "viper (fast), ulab (CircuitPython), pure "
                "Python, or float; auto takes the first of these the board has",
        "choices": BACKENDS})
    dataset_dtype: str = field(default="int8", metadata={
        "help": "how the fine-tuning samples are packed on the board (int8: 4x less flash)",
        "choices": DATASET_DTYPES})

    @property
    def scale(self):
        return (self.rank if self.alpha is None else self.alpha) / self.rank
