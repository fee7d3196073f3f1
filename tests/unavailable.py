"""What a test does when something it needs is not on this machine.

A developer's checkout may lack ../shared (the cooling-fan data, the Cortex-M firmware) or
qemu-system-arm: there the test skips and says why. CI must run everything: under CI=true the
same test fails with the reason, so a skip can never hide a test CI does not run.
"""
import os

import pytest


def unavailable(why):
    """Skip with `why`, or fail with it under CI=true."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must run this test: {why}", pytrace=False)
    pytest.skip(why)


def require_cooling_fan_data():
    """The cooling-fan zips (../shared/datasets/cooling-fan or SKIP2LORA_DATA_DIR)."""
    from skip2lora.data.cooling_fan import data_dir
    from skip2lora.errors import UserError

    try:
        data_dir()
    except UserError as e:
        unavailable(f"cooling-fan data not available: {e}")


def require_emulator(kind):
    """qemu-system-arm and the firmware of a Cortex-M kind, or the interpreter of a platforms
    unix kind (circuitpython, micropython-ulab); nothing for the unix port. Found the way
    `skip2lora board start --emulate` finds them."""
    from skip2lora.board.virtual.circuitpython import INTERPRETERS, find_interpreter
    from skip2lora.board.virtual.qemu import MACHINES, find_firmware, find_qemu
    from skip2lora.errors import UserError

    if kind == "unix":
        return
    if kind in INTERPRETERS:
        try:
            find_interpreter(kind)
        except UserError as e:
            unavailable(str(e))
        return
    if kind not in MACHINES:
        raise ValueError(f"unknown interpreter kind {kind!r}")
    try:
        find_qemu()
        find_firmware(kind)
    except UserError as e:
        unavailable(str(e))
