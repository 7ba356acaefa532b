"""Compat shim that lets the authors' UNMODIFIED TF1 test scripts run on TF 2.x / numpy 1.26 /
a scipy without ``scipy.misc.imread``.

Python imports ``sitecustomize`` at start-up from any ``sys.path`` entry, so
``run_authors_tf.py`` puts this folder on ``PYTHONPATH`` of the subprocess that runs the
authors' script (and of nothing else). It must be used with the TensorFlow venv of README.md.

What it patches (nothing else):

- ``import tensorflow`` -> ``tf.compat.v1`` with v2 behaviour (eager execution included)
  disabled. The module keeps TF's ``__path__`` so TF's own lazy submodule imports still work.
- ``tf.contrib.layers.batch_norm`` -> :func:`_contrib_batch_norm`: a FRESH batch norm in training
  mode, as TF1's contrib layer built it in the authors' test graph: new ``BatchNorm/{beta,gamma}``
  variables (0 and 1; the test scripts never load the checkpoint's BN variables), normalised
  with the fed image's own statistics via ``fused_batch_norm(is_training=True)`` (biased
  variance), which is the path TF >= 1.4 contrib took for a rank-4 input with
  ``updates_collections=None``. TF1's ``nn.fused_batch_norm`` raised ``epsilon`` to at least
  1.001e-5 (cuDNN's minimum); TF 2.15 no longer does, so the clamp is applied here. The
  moving-average update the contrib layer also ran does not change the output and is left out.
- ``np.float`` -> ``float`` (removed in numpy 1.24).
- ``scipy.misc.imread(name, flatten=False, mode=None)``: scipy 1.1's implementation
  (``Image.open`` + ``fromimage``: ``convert(mode)`` when the mode differs, then
  ``convert('F')`` when ``flatten``), so ``flatten=True, mode='YCbCr'`` goes
  L/RGB -> YCbCr -> (via RGB) -> F exactly as with scipy <= 1.1 and the installed Pillow.
- ``scipy.misc.imsave(name, arr)``: scipy 1.1's ``toimage`` + ``save`` (``bytescale``: min-max
  stretch of the float image to 0..255, ``+0.5`` then truncation) AND ``numpy.save`` of the raw
  array it was given to ``<name>.npy`` (for the generators: ``tanh_output * 127.5 + 127.5``).
"""

from __future__ import annotations

import sys
import types
from typing import Any

import numpy as np


def _install_tensorflow() -> None:
    import tensorflow as real_tf

    tf1 = real_tf.compat.v1
    tf1.disable_v2_behavior()

    def _contrib_batch_norm(inputs: Any, decay: float = 0.999, center: bool = True,
                            scale: bool = False, epsilon: float = 0.001,
                            updates_collections: Any = None, is_training: bool = True,
                            scope: str | None = None, **unsupported: Any) -> Any:
        del decay, updates_collections  # only affect the moving averages, not the output
        if unsupported or is_training is not True:
            raise NotImplementedError(f"shim batch_norm: unsupported arguments {unsupported}, "
                                      f"is_training={is_training}")
        inputs = tf1.convert_to_tensor(inputs)
        if inputs.shape.ndims != 4 or inputs.shape[-1] is None:
            raise NotImplementedError("shim batch_norm: needs an NHWC input with known channels")
        channels = int(inputs.shape[-1])
        with tf1.variable_scope(scope, default_name="BatchNorm"):
            beta = (tf1.get_variable("beta", [channels], initializer=tf1.zeros_initializer())
                    if center else tf1.zeros([channels]))
            gamma = (tf1.get_variable("gamma", [channels], initializer=tf1.ones_initializer())
                     if scale else tf1.ones([channels]))
            out, _mean, _var = tf1.nn.fused_batch_norm(
                inputs, gamma, beta, epsilon=max(float(epsilon), 1.001e-5), is_training=True)
        return out

    layers = types.SimpleNamespace(batch_norm=_contrib_batch_norm)
    contrib = types.SimpleNamespace(layers=layers)

    class _TF1Module(types.ModuleType):
        def __getattr__(self, name: str) -> Any:
            if name == "contrib":
                return contrib
            return getattr(tf1, name)

    module = _TF1Module("tensorflow", "tf.compat.v1 (authors_reference shim)")
    module.__path__ = list(real_tf.__path__)
    module.__file__ = real_tf.__file__
    module.__version__ = real_tf.__version__
    sys.modules["tensorflow"] = module


def _bytescale(data: np.ndarray, high: int = 255, low: int = 0) -> np.ndarray:
    """scipy 1.1 ``misc.bytescale`` with its defaults (``cmin``/``cmax`` = data min/max)."""
    if data.dtype == np.uint8:
        return data
    cmin, cmax = data.min(), data.max()
    cscale = cmax - cmin
    if cscale == 0:
        cscale = 1
    scale = float(high - low) / cscale
    bytedata = (data - cmin) * scale + low
    return (bytedata.clip(low, high) + 0.5).astype(np.uint8)


def _install_scipy_misc() -> None:
    import scipy
    from PIL import Image

    try:
        import scipy.misc as misc
    except ImportError:
        misc = types.ModuleType("scipy.misc")
        sys.modules["scipy.misc"] = misc
        scipy.misc = misc  # type: ignore[attr-defined]

    def imread(name: Any, flatten: bool = False, mode: str | None = None) -> np.ndarray:
        im = Image.open(name)
        if mode is not None:
            if mode != im.mode:
                im = im.convert(mode)
        elif im.mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        if flatten:
            im = im.convert("F")
        elif im.mode == "1":
            im = im.convert("L")
        return np.array(im)

    def imsave(name: Any, arr: Any, format: str | None = None) -> None:  # noqa: A002
        data = np.asarray(arr)
        np.save(f"{name}.npy", data)
        if data.ndim != 2:
            raise NotImplementedError("shim imsave: only 2-D (grey) images are reproduced")
        image = Image.frombytes("L", (data.shape[1], data.shape[0]),
                                _bytescale(data).tobytes())
        image.save(name, format)

    misc.imread = imread  # type: ignore[attr-defined]
    misc.imsave = imsave  # type: ignore[attr-defined]


np.float = float  # type: ignore[attr-defined]
_install_scipy_misc()
_install_tensorflow()
