"""skip2lora: fine-tune small pretrained networks on MicroPython boards with Skip2-LoRA."""

__version__ = "0.1.0"
