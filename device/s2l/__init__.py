# skip2lora on the board: fine-tune a small pretrained MLP with Skip2-LoRA (arXiv 2410.21073).
#   from s2l import Model, Dataset, Trainer
from .compat import S2LError
from .model import Model
from .dataset import Dataset
from .train import Trainer

__version__ = "0.1.0"


