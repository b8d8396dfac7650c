"""detectron2's CityscapesInstanceEvaluator as our jobs run it.

detectron2 (0.6 and its main branch alike) imports cityscapesscripts under a company-internal
path, ``deeplearning.projects.cityscapesApi.cityscapesscripts``, in its Cityscapes loader and
evaluators, so they fail wherever only the public package is installed. ``alias_cityscapesscripts``
makes that path name the installed cityscapesscripts (the same modules, nothing copied), after
which detectron2's evaluator runs unchanged (with transfer/evaluation/cityscapes.py's ``cityscapes_compat``, as ours runs).
"""

from __future__ import annotations

import importlib
import sys
import types

from detectron2.evaluation import CityscapesInstanceEvaluator as Detectron2CityscapesInstanceEvaluator

from mocobench.transfer.datasets.cityscapes import cityscapes_labels
from mocobench.transfer.evaluation.cityscapes import cityscapes_compat

INTERNAL = "deeplearning.projects.cityscapesApi"
MODULES = ("cityscapesscripts", "cityscapesscripts.helpers", "cityscapesscripts.helpers.labels",
           "cityscapesscripts.evaluation", "cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling")


def alias_cityscapesscripts() -> None:
    """``deeplearning.projects.cityscapesApi.cityscapesscripts[...]`` -> ``cityscapesscripts[...]``."""
    cityscapes_labels()  # the package is there, or one line saying how to install it
    parent = None
    for i, part in enumerate(INTERNAL.split(".")):
        name = ".".join(INTERNAL.split(".")[: i + 1])
        module = sys.modules.setdefault(name, types.ModuleType(name))
        if parent is not None:
            setattr(parent, part, module)
        parent = module
    for name in MODULES:
        module = importlib.import_module(name)
        sys.modules.setdefault(f"{INTERNAL}.{name}", module)
    setattr(parent, "cityscapesscripts", sys.modules["cityscapesscripts"])


class CityscapesInstanceEvaluator(Detectron2CityscapesInstanceEvaluator):
    def __init__(self, dataset_name: str) -> None:
        alias_cityscapesscripts()
        super().__init__(dataset_name)

    def evaluate(self):
        with cityscapes_compat():  # cityscapesscripts as released fails on NumPy 2.4
            return super().evaluate()
