"""ThriftGate's local inference engine: SmolLM2-135M on onnxruntime, usable as a library on its own.

The core (this package's engine modules) needs only numpy; `AsyncLLMEngine.from_model_dir` loads
the onnxruntime `ModelRunner` and the tokenizer lazily.
"""

from local_engine.async_engine import AsyncLLMEngine, EngineError, EngineStopped, GenerationOutput
from local_engine.engine import EngineStats, LLMEngine, RequestOutput, SpeculativeMode
from local_engine.prefix_cache import PrefixCache
from local_engine.protocols import KVSegment, Runner, TokenizerLike
from local_engine.sampling import SamplingParams, TokenLogprob
from local_engine.scheduler import Scheduler, SchedulerOutput

__all__ = [
    "AsyncLLMEngine",
    "EngineError",
    "EngineStats",
    "EngineStopped",
    "GenerationOutput",
    "KVSegment",
    "LLMEngine",
    "PrefixCache",
    "RequestOutput",
    "Runner",
    "SamplingParams",
    "Scheduler",
    "SchedulerOutput",
    "SpeculativeMode",
    "TokenLogprob",
    "TokenizerLike",
]
