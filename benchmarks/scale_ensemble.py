"""The default and the small-defects preset as one model for every defect size: each alone, and combined by the
mean (`Ensemble`, what `--ensemble small-defects,default` ships) or by the maximum (a scale chosen per region:
whichever member finds a region more unusual than its own good images) of their normalised scores and maps.

    python benchmarks/scale_ensemble.py data/offline brick elpv_module_mono_small elpv_module_mono hires_brick

Both members are fitted once per category; prints image AUROC, AU-PRO to FPR 0.05 and the share of defective
images whose map maximum lies on the defect.
"""
import sys, time
from pathlib import Path
import numpy as np
from patchcore import PatchCore
from patchcore.baselines.ensemble import Ensemble
from patchcore.core.detector import DecisionRule
from patchcore.data.categories import load_category
from patchcore.evaluation.evaluate import evaluate_fitted
from patchcore.io.images import collect_images
from patchcore.methods import PRESETS


class MaxEnsemble(Ensemble):
    def _combine(self, member_scores):
        return np.max([(np.asarray(s) - m) / d for s, (m, d) in zip(member_scores, self.score_scales_)], axis=0)

    def iter_predict(self, images, false_alarm_rate=None):
        rule = DecisionRule(self.decision_threshold(false_alarm_rate))
        items = collect_images(images)
        for predictions in zip(*[m.iter_predict(items) for m in self.members]):
            score = float(self._combine([[p.score] for p in predictions])[0])
            amap = np.max([p.anomaly_map / s for p, s in zip(predictions, self.map_scales_)], axis=0)
            yield rule(score, amap.astype(np.float32), predictions[0].source, with_regions=False)


root = Path(sys.argv[1])
print("| category | model | image AUROC | AU-PRO 0.05 | map max on defect % | fit s |\n|---|---|---|---|---|---|", flush=True)
for name in sys.argv[2:]:
    category = load_category(root, name)
    models, seconds = {}, {}
    for label, params in {"default": {}, "small-defects": PRESETS["small-defects"]}.items():
        t = time.perf_counter()
        models[label] = PatchCore(**params).fit(list(category.train_images))
        seconds[label] = time.perf_counter() - t
    models["max of both"] = MaxEnsemble.from_fitted([models["default"], models["small-defects"]])
    seconds["max of both"] = sum(seconds.values())
    models["mean of both"] = Ensemble.from_fitted([models["default"], models["small-defects"]])
    seconds["mean of both"] = sum(seconds.values()) - seconds["max of both"]
    for label, model in models.items():
        r = evaluate_fitted(category, model, seconds[label])
        print(f"| {name} | {label} | {r.image_auroc:.1f} | {r.pro_05:.1f} | {r.peak_on_defect:.0f} | {seconds[label]:.0f} |", flush=True)
