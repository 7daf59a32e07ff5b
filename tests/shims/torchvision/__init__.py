"""A stand-in for torchvision, for the tests and benchmarks that import timm - never for users.

Why: timm imports torchvision (``timm.data`` builds transforms, ``timm.layers`` imports
``FrozenBatchNorm2d``), and on machines whose torchvision is a build for another torch (the CUDA
wheel next to a CPU torch) ``import torchvision`` fails ("operator torchvision::nms does not
exist"), so ``import timm`` fails although no model needs torchvision to run.

What: this directory (``tests/shims``) holds a package named ``torchvision`` with only what
timm's *import path* touches. Every attribute of its modules is a placeholder class: timm can
import it, subclass it and test ``isinstance`` against it; creating one raises, so nothing can
silently use a fake transform or data set. Models built by ``timm.create_model`` never call
torchvision.

How it is used: nothing installs it. ``tests/timm_shim.py`` puts ``tests/shims`` first on
``PYTHONPATH`` of the subprocesses that the timm tests and ``benchmarks/external_zoo.py`` start,
and only when the real ``import torchvision`` fails in that interpreter; the user's environment
and the test process itself are left as they are.
"""

from torchvision._placeholder import module_getattr

__version__ = "0.0+edgecompress.test.shim"
__getattr__ = module_getattr(__name__)
