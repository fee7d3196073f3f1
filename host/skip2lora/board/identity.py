"""Which board is on a port: its unique id and facts, for `pull` into one folder per board and
for `board status --port`.

The id is machine.unique_id() where the port has it (board script unique_id.py). A virtual
board's emulated chip reports the same id in every instance, so a virtual board (a port that is
the `tty` link of a running virtual board's run dir) keeps a random id in a file on its own
flash instead: the id lives in its image, so it survives stop and start, and a copied image
is a copied board.
"""
import uuid
from pathlib import Path

from skip2lora.board.link import BOARD_DIR
from skip2lora.board.virtual import base

BOARD_ID_FILE = BOARD_DIR + "/board_id"


def virtual_state(port):
    """The state of the running virtual board behind `port`, or None for any other port."""
    path = Path(port).expanduser()
    for run_dir in dict.fromkeys([path.parent, path.resolve().parent]):
        state = base.read_state(run_dir)
        if state is not None and path.resolve() == Path(state["port"]).resolve():
            return state
    return None


def board_facts(link):
    """What the summary and adapter_config.json say about the board on `link`."""
    state = virtual_state(link.port)
    uid = link.script("unique_id", new=uuid.uuid4().hex[:16], path=BOARD_ID_FILE,
                      stored_first=state is not None)
    info = link.info()
    facts = {"unique_id": uid, "port": str(link.port), "board": info.describe(),
             "implementation": info.name, "platform": info.platform, "arch": info.arch}
    if state is not None:
        facts["virtual"] = {"kind": state["kind"], "image": str(state["image"])}
    return facts
