"""A Python environment in which torch and the other PyTorch-side packages cannot be imported:
a directory of fake packages (first on PYTHONPATH) that raise ImportError and log which file
tried to import them, and a ``sitecustomize`` that can also block ``onnxruntime.quantization``
(EDGECOMPRESS_TEST_BLOCK_ORTQ) and writes the edgecompress modules a process loaded
(EDGECOMPRESS_TEST_MODULES_LOG)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("torch", "torch_pruning", "onnxscript", "neural_compressor", "torchao")

_FAKE = '''import os, sys
f = sys._getframe(1)
while f is not None and ("importlib" in f.f_code.co_filename or f.f_code.co_filename.startswith("<")):
    f = f.f_back
with open(os.environ["EDGECOMPRESS_TEST_IMPORT_LOG"], "a") as log:
    log.write("{name} " + (f.f_code.co_filename if f is not None else "?") + "\\n")
raise ImportError("{name} is not installed (blocked by the test)")
'''

_SITECUSTOMIZE = '''import atexit, os, sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if os.environ.get("EDGECOMPRESS_TEST_BLOCK_ORTQ") and name.startswith("onnxruntime.quantization"):
            with open(os.environ["EDGECOMPRESS_TEST_IMPORT_LOG"], "a") as log:
                f = sys._getframe(1)
                while f is not None and ("importlib" in f.f_code.co_filename or f.f_code.co_filename.startswith("<")):
                    f = f.f_back
                log.write(name + " " + (f.f_code.co_filename if f is not None else "?") + "\\n")
            raise ImportError(name + " is blocked by the test")
        return None
sys.meta_path.insert(0, _Block())
@atexit.register
def _loaded():
    p = os.environ.get("EDGECOMPRESS_TEST_MODULES_LOG")
    if p:
        with open(p, "w") as f:
            f.write("\\n".join(sorted(m for m in sys.modules if m == "edgecompress" or m.startswith("edgecompress."))))
'''


def no_torch_env(d: Path) -> tuple[dict[str, str], Path]:
    """(environment without torch & co., the file that logs blocked import attempts), built in ``d``."""
    fake = d / "fake"
    for name in BLOCKED:
        (fake / name).mkdir(parents=True, exist_ok=True)
        (fake / name / "__init__.py").write_text(_FAKE.format(name=name))
    (fake / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    log = d / "imports.log"
    env = dict(os.environ)
    env.update({"PYTHONPATH": os.pathsep.join([str(fake), str(ROOT)]), "HOME": str(d),
                "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "EDGECOMPRESS_TEST_IMPORT_LOG": str(log)})
    env.pop("EDGECOMPRESS_DEBUG", None)
    return env, log


def attempts_by_edgecompress(log: Path) -> list[str]:
    """The blocked imports that edgecompress's own files attempted."""
    lines = log.read_text().splitlines() if log.exists() else []
    return [a for a in lines if f"{os.sep}edgecompress{os.sep}" in a]
