"""Build the nbdkit plugin: cowblock-plugin.c and the C core in one .so.

    python3 csrc/nbdkit/build.py [--out DIR] [--install]

Needs gcc and nbdkit's plugin header (Debian/Ubuntu: nbdkit-plugin-dev);
no Python module at build or run time (this script only drives the
compiler, with the standard library).  The core's sources are those of
csrc/build_ffi.py, read from its SOURCES list; they are compiled with
-fvisibility=hidden, so the plugin exports nothing but nbdkit's entry
point.  --out: where cowblock-plugin.so goes (default: this directory).
--install: into nbdkit's plugin directory (`nbdkit --dump-config`'s
plugindir, as nbdkit-cowblock-plugin.so), so `nbdkit cowblock pool=...`
finds it.  COWBLOCK_SANITIZE=1 builds with AddressSanitizer and
UndefinedBehaviorSanitizer (-O0 -g), COWBLOCK_DEBUG=1 with -O0 -g.
"""
import argparse
import ast
import importlib.util
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.dirname(HERE)
PLUGIN = "cowblock-plugin.so"


def core_sources():
    """The SOURCES list of csrc/build_ffi.py, read without running it (it
    needs cffi, the plugin does not)."""
    with open(os.path.join(CSRC, "build_ffi.py")) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "SOURCES" for t in node.targets):
            return [os.path.join(CSRC, s) for s in ast.literal_eval(node.value)]
    raise SystemExit("csrc/build_ffi.py has no SOURCES list")


def build_id():
    """The core's build id (a hash of csrc's sources), from cowblock/_buildid.py
    loaded by path, as csrc/build_ffi.py does: it is stdlib only."""
    path = os.path.join(os.path.dirname(CSRC), "cowblock", "_buildid.py")
    spec = importlib.util.spec_from_file_location("_cowblock_buildid", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_id(CSRC)


def header_found(cc):
    probe = subprocess.run([cc, "-E", "-x", "c", "-", "-o", os.devnull],
                           input="#include <nbdkit-plugin.h>\n", text=True,
                           capture_output=True)
    return probe.returncode == 0


def flags():
    out = ["-std=gnu11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-fPIC", "-shared",
           "-fvisibility=hidden", "-pthread", "-I", CSRC, f'-DCB_BUILD_ID="{build_id()}"']
    if os.environ.get("COWBLOCK_SANITIZE"):
        out += ["-O0", "-g", "-UNDEBUG", "-fsanitize=address,undefined",
                "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
    elif os.environ.get("COWBLOCK_DEBUG"):
        out += ["-O0", "-g", "-UNDEBUG"]
    else:
        out += ["-O2", "-DNDEBUG"]
    return out


def build(out_dir, cc="gcc"):
    """Compile; returns the path of the plugin."""
    if not header_found(cc):
        raise SystemExit("nbdkit-plugin.h not found: install nbdkit-plugin-dev "
                         "(the plugin is optional; `cowblock serve` needs none of it)")
    os.makedirs(out_dir, exist_ok=True)
    target = os.path.join(out_dir, PLUGIN)
    tmp = target + ".tmp"
    cmd = [cc, *flags(), "-o", tmp, os.path.join(HERE, "cowblock-plugin.c"),
           *core_sources(), "-lm"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        sys.stderr.write(r.stdout + r.stderr)
        raise SystemExit(f"building {PLUGIN} failed: {' '.join(cmd)}")
    if r.stderr:
        sys.stderr.write(r.stderr)
    os.replace(tmp, target)
    return target


def plugindir():
    r = subprocess.run(["nbdkit", "--dump-config"], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        if line.startswith("plugindir="):
            return line.split("=", 1)[1]
    raise SystemExit("nbdkit --dump-config names no plugindir: is nbdkit installed?")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=HERE, help="directory for cowblock-plugin.so")
    ap.add_argument("--install", action="store_true",
                    help="copy it into nbdkit's plugindir as nbdkit-cowblock-plugin.so")
    ap.add_argument("--cc", default=os.environ.get("CC", "gcc"))
    args = ap.parse_args(argv)
    target = build(args.out, args.cc)
    print(target)
    if args.install:
        dest = os.path.join(plugindir(), "nbdkit-cowblock-plugin.so")
        shutil.copyfile(target, dest)
        os.chmod(dest, 0o755)
        print(dest)


if __name__ == "__main__":
    main()
