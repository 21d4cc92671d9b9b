"""Every operation as a job: a frozen config dataclass and `run(config, out) -> Result`.

`modeconn.jobs.run("align", a="A.safetensors", b="B.safetensors", method="wm", out="runs/al")`
does what `modeconn align A B --method wm --out runs/al` does; the CLI is generated from the
registry, and study files build the same configs.
"""

from ..options import ConfigError, FieldInfo, config_fields, option, requirement
from ._registry import (
    JOBS,
    Job,
    JobConfig,
    OptionRefused,
    Output,
    Result,
    build,
    command,
    execute,
    get,
    names,
    register,
    run,
)

__all__ = ["ConfigError", "FieldInfo", "JOBS", "Job", "JobConfig", "OptionRefused", "Output",
           "Result", "build", "command", "config_fields", "execute", "get", "names", "option", "register",
           "requirement", "run"]
