# The board's unique id in hex (skip2lora.board.identity): machine.unique_id(), or
# microcontroller.cpu.uid on CircuitPython, where the port has one; else an id kept in a file
# on the board's own flash, written once from `new` (made on the host). A virtual board
# passes stored_first=True: every emulated chip of a kind reports the same id, so its id is
# the file, which its image keeps.
def unique_id(new, path, stored_first=False):
    uid = None
    if not stored_first:
        try:
            import machine
            uid = machine.unique_id()
        except Exception:
            uid = None
        if not uid:
            try:
                import microcontroller
                uid = microcontroller.cpu.uid
            except Exception:
                uid = None
    if uid:
        print(''.join('%02x' % b for b in uid))
        return
    try:
        with open(path) as f:
            kept = f.read().strip()
    except OSError:
        kept = ''
    if not kept:
        import os
        try:
            os.mkdir(path[:path.rfind('/')])
        except OSError:
            pass
        with open(path, 'w') as f:
            f.write(new)
        kept = new
    print(kept)
