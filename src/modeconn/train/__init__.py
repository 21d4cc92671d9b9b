"""Training: the settings (`config`), the one epoch driver and the plain training step (`loop`),
runs of members with bit-identical resume (`runs`), grouped MLP members (`grouped`), learning-rate
schedules (`schedules`) and fine-tuning (`finetune`)."""

from .config import (
    OPTIMIZERS,
    TrainConfig,
    check_trainable,
    epoch_order,
    init_model,
    make_optimizer,
    noise_scale,
)
from .finetune import finetune
from .loop import Epoch, EpochDriver, Stepper
from .runs import Member, MemberRecord, can_group, plan_members, train_group, train_member, train_run

__all__ = ["OPTIMIZERS", "Epoch", "EpochDriver", "Member", "MemberRecord", "Stepper", "TrainConfig",
           "can_group", "check_trainable", "epoch_order", "finetune", "init_model", "make_optimizer",
           "noise_scale", "plan_members", "train_group", "train_member", "train_run"]
