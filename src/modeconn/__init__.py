"""modeconn: mode connectivity for any PyTorch model.

The verbs are importable from the top, over private modules (as POT's `ot.emd`): every science
function takes a model template (an `nn.Module`), parameter dicts (`state_dict`s), data tensors and
keyword options. Every command of the CLI is also a job: `modeconn.jobs.run("align", ...)`.
"""

from ._version import __version__
from .align import (
    Permutation,
    PermutationSpec,
    activation_matching,
    auto_spec,
    merge_many,
    ste_matching,
    ste_mm,
    weight_matching,
)
from .checkpoint import load_checkpoint, save_model
from .ensemble import ensemble_metrics, similarity
from .evaluate import Evaluator
from .fge import fge_snapshots
from .graph import register_layer
from .merge import OTFusion, average, bn_reset, fuse, mpf, ot_fusion, repair
from .models import build_model, load_model, model_config
from .paths import (
    Curve,
    ParamPath,
    barrier,
    fit_curve,
    hessian_trace,
    interpolate,
    linear_path,
    load_curve,
    loss_plane,
    path_summary,
    plane,
    save_curve,
)
from .task import CLASSIFICATION, Classification, Task
from .train import TrainConfig

__all__ = [
    "CLASSIFICATION", "Classification", "Curve", "Evaluator", "OTFusion", "ParamPath",
    "Permutation", "PermutationSpec", "Task", "TrainConfig",
    "__version__", "activation_matching", "auto_spec", "average", "barrier", "bn_reset",
    "build_model", "ensemble_metrics", "fge_snapshots", "fit_curve", "fuse", "hessian_trace",
    "interpolate", "linear_path", "load_checkpoint", "load_curve", "load_model", "loss_plane",
    "merge_many", "model_config", "mpf", "ot_fusion", "path_summary", "plane", "register_layer",
    "repair", "save_curve", "save_model", "similarity", "ste_matching", "ste_mm",
    "weight_matching",
]

# The face commands (run, results, report, demo, fusion) register in the job registry beside the
# jobs, which import no face: the package root, above every layer, imports them, so that any
# `import modeconn.…` (a spawned study worker's included) knows every command.
from .report import command as _report_command  # noqa: E402, F401
from .studies import commands as _study_commands  # noqa: E402, F401
from .studies import protocols as _protocols  # noqa: E402, F401
