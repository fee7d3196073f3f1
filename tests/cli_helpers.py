"""What every CLI test checks the same way: run `skip2lora` in-process, and the one-line error."""
from skip2lora import cli


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err, *fragments):
    """The error line, after checking it is the only line, has the prefix and each fragment."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("skip2lora: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])
    return lines[0]


def skip2lora(*args, env=None, check=True, timeout=300):
    """`python -m skip2lora ARGS` in its own process, as a user runs it (env adds variables)."""
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "skip2lora", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def mpremote(port, *args, timeout=60):
    """The real mpremote on a port; its stdout, after checking it succeeded."""
    import os
    import subprocess
    import sys

    mp = os.path.join(os.path.dirname(sys.executable), "mpremote")
    done = subprocess.run([mp, "connect", port, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def drift_model(d, dims, n_train, n_finetune, n_test, epochs):
    """A small model pre-trained on drift data, compiled to int8 as d/model.s2lm, with
    d/finetune.npz and d/test.npz beside it; returns the scenario."""
    import numpy as np

    from skip2lora.data.synthetic import make_drift
    from skip2lora.training.pretrain import pretrain, save_torch

    sc = make_drift(n_features=dims[0], n_train=n_train, n_finetune=n_finetune, n_test=n_test,
                    seed=3)
    save_torch(pretrain(*sc.pretrain, dims=dims, epochs=epochs, seed=0), d / "model.pt")
    np.savez(d / "finetune.npz", x=sc.finetune[0], y=sc.finetune[1])
    np.savez(d / "test.npz", x=sc.test[0], y=sc.test[1])
    skip2lora("compile", d / "model.pt", "-o", d / "model.s2lm", "--dtype", "int8")
    return sc


def uart_sized_drift(d):
    """drift_model's small int8 model (16-12-8-3) and a little drift data: what the emulated
    boards take over their slow UARTs (the QEMU ones move ~4-5 KB/s)."""
    return drift_model(d, (16, 12, 8, 3), n_train=200, n_finetune=40, n_test=60, epochs=20)
