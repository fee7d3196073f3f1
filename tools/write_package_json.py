"""Write device/package.json, what `mpremote mip install` reads, from device/manifest.py.

The manifest is what a firmware freeze reads, so deriving mip's file list from it keeps the two
ways of installing the package from drifting apart: `package("s2l")` means every .py in the
folder, and a module added there is listed the next time this runs (`--check`, run by
tests/test_packaging.py, fails until then).

Only the manifest commands the package uses are understood (metadata, package, module); any
other one stops the tool instead of being left out of package.json unnoticed. The bench
extension (device/s2l-bench) gets no package.json: `skip2lora bench` deploys it, and mip could
not follow its require("s2l") to this folder (mip's deps name micropython-lib packages or
absolute URLs, never a sibling package.json).

    python tools/write_package_json.py            # rewrite device/package.json
    python tools/write_package_json.py --check    # exit 1 if it is not what the manifest gives
"""
import argparse
import json
import sys
from pathlib import Path

DEVICE = Path(__file__).resolve().parent.parent / "device"


class ManifestError(Exception):
    pass


def read_manifest(manifest):
    """(metadata dict, [(path on the board, source relative to the manifest's folder)])."""
    manifest = Path(manifest)
    here = manifest.parent
    meta, entries = {}, []

    def metadata(**kw):
        meta.update(kw)

    def package(package_path, files=None, base_path=".", opt=None):
        base = here / base_path
        if files is None:
            found = sorted((base / package_path).rglob("*.py"))
            if not found:
                raise ManifestError(f"{manifest}: package({package_path!r}) has no .py files")
            targets = [p.relative_to(base).as_posix() for p in found]
        else:
            targets = [f"{package_path}/{f}" for f in files]
        for target in targets:
            add(target, base_path)

    def module(module_path, base_path=".", opt=None):
        add(module_path, base_path)

    def add(target, base_path):
        source = (Path(base_path) / target).as_posix()
        if not (here / source).is_file():
            raise ManifestError(f"{manifest}: {source} does not exist")
        entries.append((target, source[2:] if source.startswith("./") else source))

    def unsupported(name):
        def refuse(*args, **kw):
            raise ManifestError(f"{manifest}: {name}() is not understood by this tool; "
                                f"package.json would leave out what it adds")
        return refuse

    env = {"metadata": metadata, "package": package, "module": module,
           **{n: unsupported(n) for n in ("require", "include", "add_library", "freeze",
                                          "freeze_as_mpy", "freeze_as_str", "freeze_mpy",
                                          "c_module")}}
    exec(compile(manifest.read_text(), str(manifest), "exec"), env)
    if "version" not in meta:
        raise ManifestError(f"{manifest}: metadata(version=...) is missing")
    return meta, entries


def package_json(manifest):
    """mip's package.json text for the manifest (urls relative to the manifest's folder)."""
    meta, files = read_manifest(manifest)
    data = {"urls": [[target, source] for target, source in files], "deps": [],
            "version": meta["version"]}
    return json.dumps(data, indent=2) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if package.json differs from the manifest's")
    parser.add_argument("--device", type=Path, default=DEVICE,
                        help="the folder holding manifest.py and package.json (default device/)")
    args = parser.parse_args(argv)
    target = args.device / "package.json"
    try:
        text = package_json(args.device / "manifest.py")
    except ManifestError as exc:
        print(f"write_package_json: {exc}", file=sys.stderr)
        return 2
    current = target.read_text() if target.exists() else None
    if args.check:
        if current != text:
            print(f"{target} is not what {args.device / 'manifest.py'} gives: run "
                  f"python tools/write_package_json.py", file=sys.stderr)
            return 1
        return 0
    if current != text:
        target.write_text(text)
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
