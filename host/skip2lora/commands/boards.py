"""`skip2lora boards`: the board profiles compile budgets against."""
from skip2lora.board.profiles import BOARDS
from skip2lora.board.budget import kib


def register(subparsers):
    parser = subparsers.add_parser("boards", help="list the board profiles",
                                   description="List the boards skip2lora knows, with the heap "
                                               "and filesystem figures the budget uses.")
    parser.set_defaults(run=run)


def run(args):
    print(f"{'name':<15} {'heap':>12} {'filesystem':>13}  {'mpy arch':<10} int/float  board")
    for board in BOARDS.values():
        print(f"{board.name:<15} {kib(board.heap_bytes):>12} {kib(board.fs_bytes):>13}  "
              f"{board.mpy_arch:<10} {board.word_bits}/{board.float_bits} bit  "
              f"{board.description}")
        if board.notes:
            print(f"{'':<15} note: {board.notes}")
    return 0
