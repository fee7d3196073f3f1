"""The Cortex-M kinds: real MicroPython firmware for armv6m / armv7emsp under qemu-system-arm.

The unix kind is 64-bit with double floats and no native Cortex-M code, so bugs that only a
32-bit board shows (viper ints wrapping at 32 bits, single floats, .mpy arch, a 192 KiB heap
that fragments) pass there. These kinds run the firmware built from MicroPython's ports/qemu
(../shared/platforms, see its README) with QEMU's UART on a pty and an instruction-count clock.

    mpremote --- <run dir>/tty -> /dev/pts/N --- qemu-system-arm -machine mps2-an385|an386
                                                  firmware; '/' = LittleFS on a 4 MiB RAM disk
    supervisor (python -m skip2lora.board.virtual.qemu supervise): starts QEMU with the image
    preloaded into the RAM disk, speaks QMP to it on stdio, and on a clean stop pauses the CPU
    and saves the RAM disk back over the image.

The supervisor also keeps the pty open. QEMU takes a pty nobody holds as disconnected and then
looks for the host's bytes only once a second, which made every mpremote call a second slower.
"""
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
import tty
from pathlib import Path

from skip2lora.board.virtual.base import (CHILD_PID_FILE, HOST_DIR, KiB, LINK_NAME, LOG_FILE,
                                          VirtualBoard, catch_stop_signals, format_size,
                                          pdeathsig_setter, point_link, remove_state,
                                          supervisor_main, write_state)
from skip2lora.board.virtual.images import RAM_DISK_ADDR, RAM_DISK_BYTES
from skip2lora.errors import UserError
from skip2lora.formats import write_atomic

MACHINES = {"cortex-m0plus": "mps2-an385", "cortex-m4f": "mps2-an386"}
HEAP = 192 * KiB  # MICROPY_HEAP_SIZE the firmware was built with
READY_TIMEOUT = 20.0  # boot, and formatting a blank RAM disk, take well under a second


def platforms_dir():
    """$SKIP2LORA_PLATFORMS, else ../shared/platforms beside the checkout."""
    explicit = os.environ.get("SKIP2LORA_PLATFORMS")
    if explicit:
        return Path(explicit).expanduser()
    return HOST_DIR.parent.parent / "shared" / "platforms"


def find_firmware(kind):
    path = platforms_dir() / f"{kind}.elf"
    if not path.is_file():
        raise UserError(f"no {kind} firmware at {path}: set SKIP2LORA_PLATFORMS to the folder "
                        "holding cortex-m0plus.elf and cortex-m4f.elf, or build them from "
                        "MicroPython's ports/qemu (docs/virtual-board.md)")
    return path


def find_qemu():
    found = shutil.which("qemu-system-arm")
    if not found:
        raise UserError("qemu-system-arm is not installed: `apt-get install qemu-system-arm` "
                        "(the Cortex-M virtual boards run their firmware under it)")
    return found


def prepare_ram_disk(image):
    """A new image is all zeros (the firmware formats it on boot); an old one must be 4 MiB."""
    image = Path(image)
    if not image.exists():
        image.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(image, bytes(RAM_DISK_BYTES))
        return
    size = image.stat().st_size
    if size != RAM_DISK_BYTES:
        raise UserError(f"not a RAM-disk image: it holds {size} bytes where a Cortex-M board's "
                        f"RAM disk is {RAM_DISK_BYTES} (1024 blocks of 4096); give another "
                        "--image, or remove this one to start blank", image)


class QemuBoard(VirtualBoard):
    """`VirtualBoard(image, kind="cortex-m0plus" | "cortex-m4f")`: fixed heap and disk.

    stop() saves the RAM disk to the image; kill() (a power cut) loses what the board wrote
    since the last start, as a RAM disk does.
    """

    supervisor_module = "skip2lora.board.virtual.qemu"

    def __init__(self, image=None, *, kind, heap=None, flash=None, run_dir=None, detach=False):
        for option, given in (("--heap", heap), ("--flash", flash)):
            if given is not None:
                raise UserError(f"{option} does not apply to a {kind} board: its firmware has "
                                f"a fixed {format_size(HEAP)} heap and a "
                                f"{format_size(RAM_DISK_BYTES)} RAM disk; drop {option}")
        self.image_name = f"{kind}.img"
        super().__init__(image, kind=kind, run_dir=run_dir, detach=detach)
        self.heap, self.flash = HEAP, RAM_DISK_BYTES

    def prepare(self):
        qemu, firmware = find_qemu(), find_firmware(self.kind)
        prepare_ram_disk(self.image)
        return ["--kind", self.kind, "--qemu", qemu, "--firmware", str(firmware)]

    def describe(self):
        return (f"{self.kind} firmware under QEMU, heap {format_size(self.heap)}, "
                f"RAM disk {format_size(self.flash)}, image {self.image}")


# ---------------------------------------------------------------------------------------------
# The supervisor process
# ---------------------------------------------------------------------------------------------

class QemuError(Exception):
    pass


class Supervisor:
    def __init__(self, run_dir, image, kind, qemu, firmware):
        self.run_dir, self.image, self.kind = Path(run_dir).resolve(), Path(image).resolve(), kind
        self.qemu, self.firmware = qemu, firmware
        self.log_file = open(self.run_dir / LOG_FILE, "a", buffering=1)
        self.child = None
        self.buffer = b""
        self.pts = None
        self.held = None  # our fd on the pty: keeps QEMU's serial "connected"
        self.stopping = False

    def log(self, message):
        self.log_file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    # -- QMP ----------------------------------------------------------------------------------

    def read_message(self, timeout):
        """The next QMP reply (events are logged and skipped); QemuError if QEMU is gone."""
        deadline = time.monotonic() + timeout
        fd = self.child.stdout.fileno()
        while True:
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                try:
                    message = json.loads(line)
                except ValueError:
                    if line.strip():
                        self.log(f"qemu: {line.decode(errors='replace').strip()}")
                    continue
                if "event" in message:
                    self.log(f"qemu event {message['event']}")
                    continue
                return message
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise QemuError("QEMU did not answer on QMP")
            data = os.read(fd, 65536)
            if not data:
                raise QemuError("QEMU exited")
            self.buffer += data

    def qmp(self, command, timeout=30, **arguments):
        request = {"execute": command, **({"arguments": arguments} if arguments else {})}
        self.child.stdin.write(json.dumps(request).encode() + b"\n")
        self.child.stdin.flush()
        reply = self.read_message(timeout)
        if "error" in reply:
            raise QemuError(f"QMP {command}: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")

    # -- life cycle ---------------------------------------------------------------------------

    def spawn(self):
        argv = [self.qemu, "-machine", MACHINES[self.kind], "-nographic", "-monitor", "none",
                "-qmp", "stdio", "-semihosting", "-icount", "shift=3", "-serial", "pty",
                "-kernel", str(self.firmware), "-device",
                f"loader,file={self.image},addr={RAM_DISK_ADDR:#x},force-raw=on"]
        self.log(f"starting {' '.join(argv)}")
        self.child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self.log_file, close_fds=True,
                                      start_new_session=True,
                                      preexec_fn=pdeathsig_setter(signal.SIGKILL))
        (self.run_dir / CHILD_PID_FILE).write_text(str(self.child.pid))
        self.read_message(READY_TIMEOUT)  # the greeting
        self.qmp("qmp_capabilities")
        for chardev in self.qmp("query-chardev"):
            if chardev["label"] == "serial0" and chardev["filename"].startswith("pty:"):
                self.pts = chardev["filename"][4:]
        if not self.pts:
            raise QemuError("QEMU gave its serial port no pty")

    def wait_for_prompt(self):
        """Hold the pty, raw, and wait until the firmware answers Ctrl-C with its prompt.

        Twice: the banner alone comes before QEMU reads the host's bytes (its pty starts
        "disconnected" and is polled once a second), and a board that printed a prompt but does
        not yet read input would cost the first command that second.
        """
        self.held = os.open(self.pts, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.held)  # no echo, no CR/LF translation: what mpremote expects of a UART
        deadline = time.monotonic() + READY_TIMEOUT
        for _ in range(2):
            os.write(self.held, b"\x03")  # at the friendly REPL: a fresh prompt
            seen = b""
            while not seen.endswith(b">>> "):
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.held], [], [], left)[0]:
                    raise QemuError("the firmware did not reach its prompt "
                                    f"(it said {seen[-200:]!r})")
                seen += os.read(self.held, 4096)
            self.log(f"firmware at its prompt: {seen[-200:]!r}")

    def save(self):
        """Pause the CPU, dump the RAM disk, put it over the image atomically."""
        self.qmp("stop")
        dump = self.image.with_name(self.image.name + ".ram")
        try:
            self.qmp("pmemsave", val=RAM_DISK_ADDR, size=RAM_DISK_BYTES, filename=str(dump))
            data = dump.read_bytes()
            if len(data) != RAM_DISK_BYTES:
                raise QemuError(f"pmemsave wrote {len(data)} bytes, not {RAM_DISK_BYTES}")
            write_atomic(self.image, data)
        finally:
            try:
                dump.unlink()
            except OSError:
                pass
        self.log(f"RAM disk saved to {self.image}")

    def run(self):
        wake_r = catch_stop_signals(self.on_signal)
        try:
            self.spawn()
            self.wait_for_prompt()
            point_link(self.run_dir, self.pts)
            write_state(self.run_dir, {
                "pid": os.getpid(), "kind": self.kind, "port": str(self.run_dir / LINK_NAME),
                "pts": self.pts, "image": str(self.image), "heap": HEAP, "flash": RAM_DISK_BYTES,
                "firmware": str(self.firmware), "run_dir": str(self.run_dir),
                "started": time.time()})
            self.log(f"ready on {self.run_dir / LINK_NAME} -> {self.pts}")
            while not self.stopping:
                ready = select.select([wake_r, self.child.stdout.fileno()], [], [], 1.0)[0]
                if wake_r in ready:
                    try:
                        os.read(wake_r, 512)
                    except OSError:
                        pass
                if self.child.stdout.fileno() in ready and not self.stopping:
                    try:
                        self.read_message(0.5)
                    except QemuError as exc:
                        if str(exc) == "QEMU exited":
                            raise QemuError(
                                "QEMU exited by itself: machine.reset() (or `mpremote reset`) "
                                "ends the emulator on this firmware, a semihosting exit; the "
                                "RAM disk since the last start is lost") from None
            self.save()
            self.qmp("quit")
            self.child.wait(timeout=10)
            return 0
        except (QemuError, OSError, subprocess.TimeoutExpired) as exc:
            self.log(f"error: {exc}")
            print(f"{self.kind} board: {exc}", file=sys.stderr)
            return 1
        finally:
            if self.child is not None and self.child.poll() is None:
                self.child.kill()
                self.child.wait()
            if self.held is not None:
                os.close(self.held)
            remove_state(self.run_dir, self.pts)
            self.log("supervisor stopped")

    def on_signal(self, signum, frame):
        self.stopping = True


def _add_arguments(parser):
    parser.add_argument("--kind", required=True, choices=sorted(MACHINES))
    parser.add_argument("--qemu", required=True)
    parser.add_argument("--firmware", required=True)


def _run(args):
    return Supervisor(args.run_dir, args.image, args.kind, args.qemu, args.firmware).run()


if __name__ == "__main__":
    sys.exit(supervisor_main("skip2lora.board.virtual.qemu", _add_arguments, _run))
