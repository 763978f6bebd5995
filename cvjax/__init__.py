"""cvjax: convolutional computer vision in JAX/Flax.

    import cvjax
    run = cvjax.restore('runs/lenet5_fashion_mnist')   # a trained run, ready to predict
    results = cvjax.fit(config, workdir)               # train or resume a TrainConfig

Importing cvjax does no I/O, parses no flags and queries no devices. `restore` and
`fit` are resolved on first use (PEP 562), so `import cvjax` stays light and the
package's layers (see README "Layout") are imported only when needed.
"""
import importlib

__version__ = '0.1.0'

_LAZY = {'restore': ('cvjax.restoring', 'restore'),
         'restore_ensemble': ('cvjax.restoring', 'restore_ensemble'), 'fit': ('cvjax.tasks', 'fit')}


def __getattr__(name):
  if name in _LAZY:
    module, attr = _LAZY[name]
    return getattr(importlib.import_module(module), attr)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
