"""Callbacks that change mask parameters during `model.fit`.

Parameters that change during training (a masking rate, a span, a window)
live in non-trainable variables; assigning a variable changes what the
compiled training step computes without retracing it.

Example: a masking rate decaying from 0.30 to 0.15 over 1,000 steps.

>>> import keras_dynmask as kd
>>> masking = kd.TokenMasking(100, mask_token_id=1)
>>> decay = kd.schedules.VariableSchedule(
...     masking.selection_rate_variable, kd.schedules.linear(0.3, 0.15, 1000))
>>> for step in range(501):
...     decay.on_train_batch_begin(step)
>>> round(float(masking.selection_rate_variable.numpy()), 3)
0.225
"""

import keras

from keras_dynmask.core._checks import check_int


def linear(start, end, steps):
    """A schedule going linearly from `start` to `end` over `steps` steps,
    then staying at `end`.

    Example:

    >>> from keras_dynmask.models.schedules import linear
    >>> f = linear(0.3, 0.15, steps=3)
    >>> [round(f(step), 3) for step in range(5)]
    [0.3, 0.25, 0.2, 0.15, 0.15]
    """
    steps = check_int("steps", steps, minimum=1)
    start, end = float(start), float(end)

    def schedule(step):
        fraction = min(step, steps) / steps
        return start + (end - start) * fraction

    return schedule


class VariableSchedule(keras.callbacks.Callback):
    """Sets `variable` to `schedule(step)` before every training batch (or
    `schedule(epoch)` before every epoch with `per="epoch"`).

    Args:
        variable: a `keras.Variable`, for example
            `TokenMasking.selection_rate_variable`.
        schedule: callable from the step (or epoch) number to a value.
        per: `"batch"` or `"epoch"`. Defaults to `"batch"`.
        initial_step: int >= 0. The step (batch) count to start from: a
            run resumed at step `n` passes `n`, so that it sets the values
            an uninterrupted run sets. Defaults to `0`.

    Example:

    >>> import keras_dynmask
    >>> from keras_dynmask.models.schedules import VariableSchedule, linear
    >>> masking = keras_dynmask.TokenMasking(100, mask_token_id=1)
    >>> callback = VariableSchedule(
    ...     masking.selection_rate_variable, linear(0.30, 0.15, 1000))
    """

    def __init__(self, variable, schedule, per="batch", initial_step=0):
        super().__init__()
        if per not in ("batch", "epoch"):
            raise ValueError(
                f"per must be 'batch' or 'epoch', received per={per!r}"
            )
        if not callable(schedule):
            raise ValueError(
                f"schedule must be callable, received schedule={schedule!r}"
            )
        self.variable = variable
        self.schedule = schedule
        self.per = per
        self._step = check_int("initial_step", initial_step, minimum=0)

    def on_train_batch_begin(self, batch, logs=None):
        if self.per == "batch":
            self.variable.assign(self.schedule(self._step))
        self._step += 1

    def on_epoch_begin(self, epoch, logs=None):
        if self.per == "epoch":
            self.variable.assign(self.schedule(epoch))
