"""Training: :class:`PostPretrainer` and its parts.

- :mod:`.trainer`: the loop (``fit``) and the step (``train_step``);
- :mod:`.student_teacher`: the student, its EMA teacher, forward/backward, accumulation;
- :mod:`.learner`: a backbone plus an objective's head(s);
- :mod:`.inputs`: a step's inputs (:class:`StepInputs`), token masks, micro-batches;
- :mod:`.state`: the train state a checkpoint holds (weights, optimizer, RNG);
- :mod:`.data`: a run's clips, sampler and loader;
- :mod:`.optim`, :mod:`.nonfinite`, :mod:`.progress`, :mod:`.components`.
"""

from .inputs import StepInputs
from .learner import Learner
from .nonfinite import NonFiniteGuard, NonFiniteLossError
from .state import TrainState
from .student_teacher import StudentTeacher, ema_momentum, ema_update_
from .trainer import PostPretrainer

__all__ = [
    "Learner",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "PostPretrainer",
    "StepInputs",
    "StudentTeacher",
    "TrainState",
    "ema_momentum",
    "ema_update_",
]
