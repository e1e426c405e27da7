"""The Lightning layer for code that imports ``pytorch_lightning`` (the standalone package).

    import pytorch_lightning as pl
    from lightning_o2nc.pytorch_lightning import O2NCModule, O2NCMonitor, AveragedIterate

It holds the names of :mod:`lightning_o2nc.lightning`. The callbacks and data modules are the
very same classes (each derives from both packages' base class, so either Trainer accepts it);
``O2NCModule``, ``CharLanguageModule`` and ``O2NCLightningCLI`` are the same bodies put on ``pytorch_lightning``'s base
classes by :func:`~lightning_o2nc.lightning.packages.for_package`.
"""

from . import lightning as _lightning
from .lightning import *  # noqa: F403  (every name of the lightning layer, listed in its __all__)
from .lightning.cli import O2NCLightningCLI as _O2NCLightningCLI
from .lightning.packages import for_package

O2NCModule = for_package(_lightning.O2NCModule, "pytorch_lightning")
CharLanguageModule = for_package(_lightning.CharLanguageModule, "pytorch_lightning")
O2NCLightningCLI = for_package(_O2NCLightningCLI, "pytorch_lightning")

__all__ = [*_lightning.__all__, "O2NCLightningCLI"]
