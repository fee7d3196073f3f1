"""`skip2lora pull`: bring the board's trained adapters home, checked, in .s2la and PEFT form."""
from pathlib import Path

from skip2lora.board import fleet
from skip2lora.board.identity import board_facts
from skip2lora.commands.common import add_port_argument
from skip2lora.errors import UserError
from skip2lora.model.formats import write_atomic, read_adapters
from skip2lora.board.link import BOARD_ADAPTERS, BOARD_MODEL, BoardError, BoardLink
from skip2lora.model.peft import write_peft_dir


def register(subparsers):
    parser = subparsers.add_parser(
        "pull", help="fetch the trained adapters from the board",
        description="Copy the adapters the board trained, check their CRC and that they belong "
                    "to the model on the board, and write adapters.s2la, adapter_config.json and "
                    "adapter_model.safetensors (PEFT-style key names) into DIR. With several "
                    "--port, one sub-folder of DIR per board, named by the board's unique id, "
                    "with the port and board facts in adapter_config.json.")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="folder to write")
    add_port_argument(parser)
    parser.set_defaults(run=run)


def run(args):
    if fleet.several(args.port):
        return fleet.run_fleet(args.port, lambda port: pull_board(Path(args.output), port,
                                                                  per_board=True), "pull")
    return pull_board(Path(args.output), fleet.single(args.port))


def pull_board(out, port, per_board=False):
    """Pull one board's adapters into out, or with per_board into out/<its unique id>."""
    board = None
    with BoardLink(port) as link:
        if per_board:
            board = board_facts(link)
            out = out / board["unique_id"]
        raw = link.read_file(BOARD_ADAPTERS, missing="the board holds no trained adapters yet: "
                                                     "run `skip2lora finetune` first")
        try:
            model_crc = link.file_crc(BOARD_MODEL)  # its last 4 bytes: no need to copy it all
        except BoardError:
            raise UserError(f"the board holds adapters but no readable model at {BOARD_MODEL} "
                            f"to check them against; flash the model again", link.port) from None
    adapters = read_adapters(raw, f"{BOARD_ADAPTERS} on the board")
    if adapters.model_crc != model_crc:
        raise UserError(f"{BOARD_ADAPTERS} on the board was trained for another model (CRC "
                        f"0x{adapters.model_crc:08x}, the board's model is "
                        f"0x{model_crc:08x}); fine-tune again", link.port)
    try:  # each file written to a temporary name and renamed: never half a file
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "adapters.s2la", raw)
    except OSError as exc:
        raise UserError(f"cannot write the adapters: {exc.strerror or exc}", out) from None
    write_peft_dir(adapters, out, board=board)
    fleet.record(epochs=adapters.epochs_done)
    n_values = sum(a.A.size + a.B.size for a in adapters.adapters)
    print(f"pulled {adapters.method} adapters: {len(adapters.adapters)} adapters, rank "
          f"{adapters.rank}, {n_values:,} values, {adapters.epochs_done} epochs, CRC ok")
    print(f"wrote {out}/adapters.s2la, adapter_config.json, adapter_model.safetensors")
    return 0
