"""Fine-tune StarCoder-family code models on a git repository's code (MPS, CUDA or CPU).

Entry points: ``starcoder-train`` (``python -m starcoder_trainer``) and ``starcoder-sample``
(``python -m starcoder_trainer.sample``). In code::

    from starcoder_trainer.config import load_config
    from starcoder_trainer.recipe import Recipe

    recipe = Recipe(load_config("config.yaml", ["train.max_steps=50"]), resume="auto").setup()
    summary = recipe.train()
    recipe.cleanup()

Submodules import torch and transformers; ``import starcoder_trainer`` alone does not.
"""

from starcoder_trainer._version import __version__

__all__ = ["__version__"]
