"""detectron2's LVISEvaluator as our jobs run it: with the ``lvis`` package made to work on
NumPy 2 for the evaluation's duration, and a metric LVISEval cannot compute (detectron2 reports
-100) as NaN, so metrics.json holds the numbers transfer/evaluation/lvis.py gives for the same
predictions."""

from __future__ import annotations

import math
from collections import OrderedDict

from detectron2.evaluation import LVISEvaluator as Detectron2LVISEvaluator

from mocobench.transfer.evaluation.lvis import import_lvis, lvis_numpy


class LVISEvaluator(Detectron2LVISEvaluator):
    def __init__(self, dataset_name: str, **kwargs) -> None:
        import_lvis()  # detectron2 imports it in __init__: the root logger left as it was
        super().__init__(dataset_name, **kwargs)

    def evaluate(self):
        with lvis_numpy():
            results = super().evaluate()
        if not results:
            return results
        return OrderedDict((task, {k: (float("nan") if isinstance(v, float) and not math.isnan(v) and v < 0
                                       else v) for k, v in metrics.items()})
                           for task, metrics in results.items())
