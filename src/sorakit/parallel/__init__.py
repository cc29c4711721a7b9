"""Distribution applied to single-device models from outside: DDP, FSDP2, sequence parallelism, a dp x sp
process layout. See ``parallelize.py`` (strategies), ``sequence.py`` (STDiT sequence parallelism) and
``mesh.py`` (process groups)."""

from sorakit.parallel.mesh import ParallelState, inference_processes, init_distributed, shutdown
from sorakit.parallel.parallelize import STRATEGIES, apply_activation_checkpointing, parallelize
from sorakit.parallel.sequence import SequenceParallel, apply_sequence_parallel

__all__ = [
    "STRATEGIES",
    "ParallelState",
    "SequenceParallel",
    "apply_activation_checkpointing",
    "apply_sequence_parallel",
    "inference_processes",
    "init_distributed",
    "parallelize",
    "shutdown",
]
