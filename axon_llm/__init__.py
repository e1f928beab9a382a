"""axon_llm: nine LLM architectures on the axon framework, with loaders, tokenizer, generation, hub and CLI."""

from axon_llm.errors import (
    CheckpointError, ChecksumError, ConfigError, DownloadError, GatedModelError, GenerationError,
    HubError, InputError, LLMError, ModelFormatError, ModelNotFoundError, OfflineError,
    TokenizerError, UnsupportedError,
)

__version__ = "0.1.0"
