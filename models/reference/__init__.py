"""Reference models trained only on the project's synthetic phantoms (not for clinical use).

Three packages exercise the whole pipeline honestly: ``ich-ct-head`` (3D segmentation of
intracranial haemorrhage), ``cxr-pneumothorax`` (2D classification of chest radiographs) and
``ct-chest-nodule`` (heavier 3D detection of lung nodules). Each is defined as data in
:mod:`models.reference.recipes`, trained by :func:`models.reference.train.train_model` on samples
from :mod:`models.reference.data` and exported by :mod:`models.reference.export`.
"""

from models.reference.recipes import RECIPES, Recipe, recipe_for

__all__ = ["RECIPES", "Recipe", "recipe_for"]
