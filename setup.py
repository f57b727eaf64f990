import importlib.util
import os

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class build_py_with_record(build_py):
    """Also write cowblock/_build_record.py (the build id of csrc) into the built package:
    an installed package has no csrc to hash (see cowblock/_buildid.py)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install hashes csrc itself
        spec = importlib.util.spec_from_file_location(
            "_cowblock_buildid", os.path.join(HERE, "cowblock", "_buildid.py"))
        buildid = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(buildid)
        target = os.path.join(self.build_lib, "cowblock", buildid.RECORD)
        with open(target, "w") as f:
            f.write(buildid.record_text(os.path.join(HERE, "csrc")))


setup(cffi_modules=["csrc/build_ffi.py:ffibuilder", "csrc/fuse/build_fuse.py:ffibuilder"],
      cmdclass={"build_py": build_py_with_record})
