"""Weight averaging over a step's last epochs (SWA, Izmailov et al. 2018).

On a few hundred clips, with mixup on every batch, the held-out score of consecutive epochs
swings by several points even as the one-cycle schedule anneals: the weights, and the
BatchNorm running statistics, still wander around the minimum. The uniform mean of the
weights at the end of the last `train.average_last` epochs of a step sits nearer its centre,
at no cost at inference (one model, not a snapshot ensemble). On the dev benchmark it was
neutral over 5 folds (results/benchmarks/quality.md), so it is off by default and searched.

Float tensors (weights and BatchNorm running mean / variance) are averaged; integer buffers
(BatchNorm's batch counter) keep their last value. Near the end of a one-cycle schedule the
learning rate is small, so the averaged running statistics match the averaged weights
closely enough that no extra pass over the data recomputes them (torch's `update_bn`).
torch.optim.swa_utils.AveragedModel does the same sums but keeps a deep copy of the module
and has no state a pickle-free checkpoint can hold, hence this small class.
"""
from __future__ import annotations

from typing import Optional

import torch


class WeightAverage:
    """The running sum of a model's tensors at the end of the epochs `first..epochs` of one
    step (1-based), to be loaded into the model after its last epoch. The window is at most
    the second half of the step: a short step's early weights are still far from where it
    ends (a 3-epoch round averages nothing, an 8-epoch one its last 4 epochs)."""

    def __init__(self, average_last: int, step_epochs: int):
        window = min(average_last, step_epochs // 2)
        self.first = step_epochs - window + 1 if window > 1 else step_epochs + 1
        self.epochs = step_epochs
        self.total: Optional[dict[str, torch.Tensor]] = None
        self.count = 0

    @property
    def enabled(self) -> bool:
        return self.first <= self.epochs

    def wants(self, epochs_done: int) -> bool:
        """Whether the weights after `epochs_done` epochs of the step join the average."""
        return self.enabled and epochs_done >= self.first

    def add(self, model: torch.nn.Module) -> None:
        state = model.state_dict()
        if self.total is None:
            self.total = {k: _as_sum(v) for k, v in state.items()}
        else:
            for k, v in state.items():
                self.total[k] = self.total[k] + _as_sum(v) if v.is_floating_point() else _as_sum(v)
        self.count += 1

    def load_into(self, model: torch.nn.Module) -> None:
        """Replace the model's tensors by the average (each in its own dtype)."""
        if not self.count:
            return
        state = model.state_dict()
        model.load_state_dict({k: (self.total[k] / self.count).to(state[k].dtype) if state[k].is_floating_point()
                               else self.total[k] for k in state})

    # a checkpoint taken inside the averaging window carries the running sum
    def state(self) -> Optional[dict]:
        return None if self.total is None else {"total": self.total, "count": self.count}

    def restore(self, state: Optional[dict]) -> None:
        if state:
            self.total, self.count = dict(state["total"]), int(state["count"])


def _as_sum(v: torch.Tensor) -> torch.Tensor:
    # float64 sums: 30 float32 additions lose nothing that matters, but the sum is cheap.
    # On the CPU whatever the model's device: a checkpoint's sums are loaded there, and
    # must add up with a GPU model's weights after a resume (MPS has no float64 at all)
    return v.detach().to("cpu", torch.float64 if v.is_floating_point() else v.dtype, copy=True)
