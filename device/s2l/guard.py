# The divergence guard of the Trainer: too large an lr makes SGD overshoot, the adapters grow
# every step and the logits with them, until float32 gives inf and then NaN; the fixed path
# saturates its int32 masters instead and its loss stays at ~100 nats, far above where it began.
# Nothing comes back from there, and an epoch saved in that state would replace good adapters
# with garbage (a NaN file, which pull refuses as corrupt). So training stops at once, before
# the epoch is saved, raising Diverged, when
#  * one sample's loss is not finite, or above train.LOSS_LIMIT (10**4) nats: the cross-entropy
#    is at most the gap between the largest logit and the true one, plus ln C, and a pretrained
#    network's logits are tens at most, so a gap of 10**4 means the adapters have exploded
#    (float32 reaches inf a few steps later);
#  * an epoch's mean loss is above both ln C, the loss of a uniform guess (the network now does
#    worse than knowing nothing), and GROWTH times the mean loss of the frozen network alone on
#    the same samples (the adapters made it 4x worse than having none: fine-tuning starts
#    there, with B = 0, and falls from there when it converges);
#  * (float path) an adapter value is not finite after the epoch's last step, whose loss was
#    computed before that step.
# train.py makes the cheap checks (a comparison per sample, one per epoch) and imports this
# module only for an epoch that fails one, so a run whose loss stays below ln C never loads it
# (the heap of an ESP32 has no room to spare). The reference costs a pass of the frozen network
# (Skip-Cache reads for skip2lora), measured once, when first needed. The loss is the one
# float of the fixed path: a loss within a rounding of a threshold may decide differently on
# float32 and float64 boards; what is on flash up to the stop is the same.
import math

from .compat import S2LError

GROWTH = 4


class Diverged(S2LError):
    """Training stopped by the divergence guard in `epoch` (1-based) with loss `loss` (a
    sample's, or the epoch's mean); the adapters last saved (epoch `kept`, 0: none) are
    untouched. The Trainer's adapters in RAM are not usable after it."""

    def __init__(self, epoch, loss, kept):
        self.epoch, self.loss, self.kept = epoch, loss, kept
        S2LError.__init__(self, "training diverged in epoch %d (loss %.6g); %s; lower lr"
                          % (epoch, loss,
                             "the adapters saved after epoch %d are untouched" % kept if kept
                             else "no adapters were saved"))


def check(t, loss, sample):
    """Trainer t's epoch in progress: raise Diverged for a sample's loss past the limit
    (sample True), or, at the epoch's end, for non-finite adapters or a mean loss past both
    bounds."""
    epoch, kept = t.epochs_done + 1, t.saved_epochs
    if sample:
        raise Diverged(epoch, loss, kept)
    if not t.arith.finite():
        raise Diverged(epoch, float("nan"), kept)
    if loss > math.log(t.C):
        if t._base_loss is None:
            t._base_loss = frozen_loss(t)
        if loss > GROWTH * t._base_loss:
            raise Diverged(epoch, loss, kept)


def frozen_loss(t):
    """Mean loss of Trainer t's frozen network alone (no adapters) over its dataset, from the
    logits its path gives (Skip-Cache records when it holds them)."""
    t.arith.prepare()  # the Skip-Cache opened (a no-op after the first epoch)
    total = 0.0
    C = t.C
    for k in range(t.n):
        z, lab, shift = t.arith.logits(k)
        unit = 1.0 / (1 << shift)
        top = z[0]
        for c in range(1, C):
            if z[c] > top:
                top = z[c]
        acc = 0.0
        for c in range(C):
            acc += math.exp((z[c] - top) * unit)
        total += math.log(acc) + (top - z[lab]) * unit
    return total / t.n
