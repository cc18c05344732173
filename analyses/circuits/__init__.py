"""Circuit discovery on any supported HF model (Llama / Qwen2 / Gemma), GQA-native, over the edge graph of
``interp.graph``: EAP, EAP-IG, ACDC, direct logit attribution, faithfulness curves, the IOI task.

    from interp.analyses import circuits as C
    task = C.ioi_task(model, 16).tokens(model)
    circ = C.eap(model, task.clean, task.corrupt, task.metric)
    curve = C.faithfulness_curve(model, task.clean, task.corrupt, circ, task.metric)

"""

from __future__ import annotations

from .acdc import acdc, acdc_order
from .circuit import Circuit, circuit_figure
from .dla import dla, dla_nodes
from .eap import eap, eap_scores
from .eap_ig import eap_ig, eap_ig_scores
from .faithfulness import FaithfulnessCurve, circuit_metric, faithfulness, faithfulness_curve
from .tasks import Task, TaskTokens, ioi_task

__all__ = ["Circuit", "FaithfulnessCurve", "Task", "TaskTokens", "acdc", "acdc_order", "circuit_figure",
           "circuit_metric", "dla", "dla_nodes", "eap", "eap_ig", "eap_ig_scores", "eap_scores", "faithfulness",
           "faithfulness_curve", "ioi_task"]

# path patching, ablation types, All-for-One, extra tasks (appended)
from .ablations import ABLATIONS, ablation_outputs, cama_means, faithfulness_by_ablation  # noqa: E402
from .all_for_one import all_for_one, all_for_one_grid, all_for_one_interventions, stage_masks  # noqa: E402
from .path_patching import path_patch, path_patch_heads  # noqa: E402
from .tasks_extra import (  # noqa: E402
    colored_objects_task,
    component_reuse,
    load_tasks,
    numeric_comparison_task,
)

__all__ += ["ABLATIONS", "ablation_outputs", "all_for_one", "all_for_one_grid", "all_for_one_interventions",
            "cama_means", "colored_objects_task", "component_reuse", "faithfulness_by_ablation", "load_tasks",
            "numeric_comparison_task", "path_patch", "path_patch_heads", "stage_masks"]

# IOI head classes by path patching (appended)
from .ioi_classes import (  # noqa: E402
    attention_stats,
    direct_path_effects,
    edge_path_effects,
    head_patterns,
    ioi_positions,
)

__all__ += ["attention_stats", "direct_path_effects", "edge_path_effects", "head_patterns", "ioi_positions"]

# completeness and minimality spot checks (appended)
from .completeness import completeness, minimality  # noqa: E402

__all__ += ["completeness", "minimality"]
