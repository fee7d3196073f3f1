# skip2lora on the board: fine-tune a small pretrained MLP with Skip2-LoRA (arXiv 2410.21073).
#   from s2l import Model, Dataset, Trainer
import gc

# The modules load leaves first, with a collection after each. Loading a module leaves
# garbage between its code objects; without the collections that garbage was freed only when
# the heap ran out, and where it ran out depended on the heap's size, so the code ended up
# spread over the heap in holes too short for a 2 KB weight block: a 64-32-10 model then
# fine-tuned on an 84 KB heap and failed on an 88 KB one. Collected module by module, the code
# packs low and the free heap stays one run, so the heap a job needs grows with the heap's
# contents only (tools/budget_truth.py measures it, host/skip2lora/board/budget.py predicts
# it). int8forward (predict), floatpath (a float model), guard (a diverged run) and the
# kernels load when first used.
for _name in ("config", "compat", "formats", "qmath", "rng", "kernels", "model", "dataset",
              "cache", "fixedpath", "train"):
    __import__(__name__ + "." + _name)
    gc.collect()

from .compat import S2LError  # noqa: E402
from .model import Model  # noqa: E402
from .dataset import Dataset  # noqa: E402
from .train import Trainer  # noqa: E402

__version__ = "0.1.0"
