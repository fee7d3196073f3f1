"""The cooling-fan vibration spectra (matutani/cooling-fan), read straight from their zips.

The zips are kept as published, so nobody has to unpack 10 k small files, and the board's
dataset files can be rebuilt from the same bytes any time. Parsing all 18 recordings of the
12 cm fan takes about 2 s; parsed arrays are kept in memory and, keyed by the zip's name, size
and mtime, in a small .npy cache, so only the first run of a session pays for it.

Features are the spectra exactly as published: 512 amplitudes per spectrum (bin 0 is always
0). The recorder scaled every spectrum with the fan running to a peak of 1; the spectra of the
stopped fan (the `o` stretch that ends every `hmlo` recording, its last ~57 of 235) were not
rescaled in the quiet rooms (peaks 0.05-0.3) but were beside the ventilator, which then sets
the peak. So |x|^2 is about 20 on average (31 in `noisy`, at most 180). No further
preprocessing: a board that collects raw spectra feeds them to the network unchanged, and no
per-feature statistic of the source room is baked into a model that the target room would
then break.
"""
import functools
import io
import os
import zipfile
from pathlib import Path

import numpy as np

from ..errors import UserError
from . import Scenario

N_BINS = 512
CLASS_NAMES = ("normal", "damage1", "damage2")
ROOMS = ("silentA", "silentB", "noisy")
SOURCE_ROOM = "silentA"

# Scenario name -> target room. The source is always silentA, as in the dataset's paper: the
# model ships trained in one office and meets another office or a room next to a ventilator.
SCENARIOS = {
    "silentA-to-noisy": "noisy",
    "silentA-to-silentB": "silentB",
}
SPLITS = ("1-2", "2-1")


def _repo_root():
    """The checkout that holds pyproject.toml, so the default data path works from any cwd."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    return None


def data_dir():
    """SKIP2LORA_DATA_DIR, else the shared dataset folder beside the repository."""
    env = os.environ.get("SKIP2LORA_DATA_DIR")
    if env:
        path = Path(env).expanduser()
    else:
        root = _repo_root()
        if root is None:
            raise UserError(
                "cannot find the cooling-fan dataset: no repository root above the installed "
                "package; set SKIP2LORA_DATA_DIR to the folder holding the cooling-fan zips",
                Path(__file__).resolve().parent,
            )
        path = root.parent / "shared" / "datasets" / "cooling-fan"
    if not path.is_dir():
        raise UserError(
            "cooling-fan dataset folder not found; set SKIP2LORA_DATA_DIR to the folder "
            "holding the cooling-fan zips (e.g. 12cm_hmlo_normal_silentA_1.zip)",
            path,
        )
    return path


def _cache_dir():
    """Where parsed arrays go; SKIP2LORA_CACHE_DIR set to an empty string turns the cache off."""
    env = os.environ.get("SKIP2LORA_CACHE_DIR")
    if env is not None:
        return Path(env).expanduser() if env else None
    return Path.home() / ".cache" / "skip2lora"


def _parse_zip(zip_path):
    """All spectra of one recording, in file-name order, which is recording order (timestamps)."""
    try:
        zf = zipfile.ZipFile(zip_path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise UserError(f"cannot read the recording zip: {exc}", zip_path) from None
    with zf:
        names = sorted(n for n in zf.namelist() if n.lower().endswith(".csv"))
        if not names:
            raise UserError("the zip holds no CSV spectra", zip_path)
        chunks = []
        for n in names:
            raw = zf.read(n)
            chunks.append(raw if raw.endswith(b"\n") else raw + b"\n")
    # One loadtxt over the whole recording: about 20x faster than a call per file.
    try:
        table = np.loadtxt(io.BytesIO(b"".join(chunks)), delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise UserError(f"malformed spectrum CSV ({exc})", zip_path) from None
    if table.shape != (len(names) * N_BINS, 2):
        raise UserError(
            f"expected {len(names)} CSVs of {N_BINS} lines 'index, amplitude', "
            f"got a table of shape {table.shape}", zip_path)
    table = table.reshape(len(names), N_BINS, 2)
    bad = np.flatnonzero((table[:, :, 0] != np.arange(N_BINS)).any(axis=1))
    if bad.size:
        raise UserError(f"{names[bad[0]]}: index column is not 0..{N_BINS - 1}", zip_path)
    return np.ascontiguousarray(table[:, :, 1], dtype=np.float32)


def _load_cached(zip_path):
    st = zip_path.stat()
    cdir = _cache_dir()
    cfile = cdir / f"cooling-fan-{zip_path.stem}-{st.st_size}-{st.st_mtime_ns}.npy" if cdir else None
    if cfile is not None and cfile.is_file():
        try:
            arr = np.load(cfile)
            if arr.ndim == 2 and arr.shape[1] == N_BINS and arr.dtype == np.float32:
                return arr
        except (OSError, ValueError):
            pass  # a torn or foreign file: parse again and overwrite it
    arr = _parse_zip(zip_path)
    if cfile is not None:
        try:
            cdir.mkdir(parents=True, exist_ok=True)
            tmp = cfile.with_suffix(f".{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                np.save(f, arr)
            os.replace(tmp, cfile)  # atomic, so a parallel reader never sees half a file
        except OSError:
            pass  # a read-only home must not stop anyone from loading data
    return arr


@functools.lru_cache(maxsize=None)
def _load(zip_path_str, size, mtime_ns):
    arr = _load_cached(Path(zip_path_str))
    arr.setflags(write=False)  # shared by every caller through the lru_cache
    return arr


def recording_names():
    """Stems of every recording zip in the data folder, sorted."""
    return sorted(p.stem for p in data_dir().glob("*.zip"))


def load_recording(name):
    """Spectra of one recording such as `12cm_hmlo_damage1_noisy_1`: float32 (n, 512), read-only."""
    stem = name[:-4] if name.endswith(".zip") else name
    path = data_dir() / f"{stem}.zip"
    if not path.is_file():
        raise UserError("no such recording in the cooling-fan dataset "
                        f"(see recording_names() for the list)", path)
    st = path.stat()
    return _load(str(path), st.st_size, st.st_mtime_ns)


def _recording(cls, room, part):
    return f"12cm_hmlo_{cls}_{room}_{part}"


def fan_stop_index(spectra):
    """Index of the first spectrum of the final stopped-fan (`o`) stretch of an hmlo recording.

    The stopped fan's spectra are the room alone: total amplitude falls to the room's floor
    (about 10 in the quiet rooms, about 32 beside the ventilator), while the slowest running
    speed stays above 1.5x that floor in every recording. The floor is the median of the last
    30 spectra, which are always stopped-fan ones in this dataset. Found this way, the stop
    comes at file 177-181 of 235 in all 18 recordings.
    """
    total = np.asarray(spectra, dtype=np.float64).sum(axis=1)
    floor = np.median(total[-30:])
    running = np.flatnonzero(total >= 1.5 * floor)
    return int(running[-1]) + 1 if running.size else 0


def load_room(room, part, fan_running_only=False):
    """All three classes of one room and one recording part (1 or 2): (X, y), classes in order."""
    xs, ys = [], []
    for label, cls in enumerate(CLASS_NAMES):
        x = load_recording(_recording(cls, room, part))
        if fan_running_only:
            x = x[:fan_stop_index(x)]
        xs.append(x)
        ys.append(np.full(len(x), label, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def load_scenario(name, split="1-2", holdout_source=True, fan_running_only=False):
    """One drift scenario of the 12 cm fan's normal/damage1/damage2 task.

    The split "a-b" names which recording of each room trains and which tests, so train and
    test are never neighbouring spectra of one recording (those are nearly identical and
    would make any accuracy look perfect):

    - pretrain    = silentA part a     (what the model ships with)
    - source_test = silentA part b     (how well it does where it was trained)
    - finetune    = target room part a (what the board collects and trains on)
    - test        = target room part b (the number that matters)

    "2-1" swaps the parts, for a second, independent estimate. With holdout_source=False the
    model pre-trains on both silentA recordings (more data, no honest source number), and
    source_test is empty.

    About a quarter of every recording (its last ~57 spectra) is the stopped fan. In the quiet
    rooms those spectra are room noise and carry no class, so even a perfect model scores
    about 84 % there (100 % on the running part, chance on the rest). Beside the ventilator
    the stopped fan still rattles differently per class and is learnable. fan_running_only
    drops the stopped stretch from every split (see fan_stop_index), for the task "classify
    a running fan".
    """
    if name not in SCENARIOS:
        raise UserError(f"unknown scenario {name!r}; choose one of {', '.join(SCENARIOS)}")
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    a, b = (int(p) for p in split.split("-"))
    target = SCENARIOS[name]
    run = fan_running_only
    tag = " (fan running only)" if run else ""
    if holdout_source:
        pretrain = load_room(SOURCE_ROOM, a, run)
        source_test = load_room(SOURCE_ROOM, b, run)
        notes = [f"pretrain: 12cm_hmlo_*_{SOURCE_ROOM}_{a}{tag}",
                 f"source_test: 12cm_hmlo_*_{SOURCE_ROOM}_{b}{tag}"]
    else:
        x1, y1 = load_room(SOURCE_ROOM, 1, run)
        x2, y2 = load_room(SOURCE_ROOM, 2, run)
        pretrain = (np.concatenate([x1, x2]), np.concatenate([y1, y2]))
        source_test = (np.zeros((0, N_BINS), np.float32), np.zeros(0, np.int64))
        notes = [f"pretrain: 12cm_hmlo_*_{SOURCE_ROOM}_1 and _2{tag}", "source_test: none"]
    notes += [f"finetune: 12cm_hmlo_*_{target}_{a}{tag}", f"test: 12cm_hmlo_*_{target}_{b}{tag}"]
    return Scenario(
        name=f"{name}/{split}" + ("/running" if run else ""),
        pretrain=pretrain,
        source_test=source_test,
        finetune=load_room(target, a, run),
        test=load_room(target, b, run),
        class_names=CLASS_NAMES,
        notes=notes,
    )
