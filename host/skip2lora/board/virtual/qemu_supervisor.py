"""The supervisor process of a Cortex-M virtual board (qemu.py starts it): runs QEMU with the
image preloaded into the RAM disk, speaks QMP to it on stdio, keeps the pty open, and on a clean
stop pauses the CPU and saves the RAM disk back over the image. A module of its own, so that the
package's import of qemu.py (which registers the board kinds) is not the module `-m` runs.
"""
import json
import os
import select
import signal
import subprocess
import sys
import time
import tty
from pathlib import Path

from skip2lora.board.virtual.base import (CHILD_PID_FILE, LINK_NAME, LOG_FILE, catch_stop_signals,
                                          pdeathsig_setter, point_link, remove_state,
                                          supervisor_main, write_state)
from skip2lora.board.virtual.images import RAM_DISK_ADDR, RAM_DISK_BYTES
from skip2lora.board.virtual.qemu import HEAP, MACHINES, READY_TIMEOUT
from skip2lora.model.formats import write_atomic


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
    sys.exit(supervisor_main("skip2lora.board.virtual.qemu_supervisor", _add_arguments, _run))
