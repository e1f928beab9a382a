"""The errors axon_llm raises.

Every failure a user can cause (a malformed file, a wrong shape, an id outside the
vocabulary, a broken download) is raised as one of these, with a message that names
the problem. They all derive from :class:`LLMError`, so ``except axon_llm.LLMError``
catches everything the library raises on purpose; most also derive from the builtin
exception a Python user would expect (``ValueError``, ``FileNotFoundError``, ...).
"""

from __future__ import annotations


class LLMError(Exception):
    """Base class of every error raised on purpose by axon_llm."""


class ConfigError(LLMError, ValueError):
    """A configuration that cannot work (e.g. ``num_attention_heads % num_key_value_heads != 0``)."""


class InputError(LLMError, ValueError):
    """Bad input to a model: token ids outside ``[0, vocab)``, a sequence too long, a wrong shape."""


class CheckpointError(LLMError, ValueError):
    """A checkpoint that does not fit the model: missing tensors, unexpected tensors, shape mismatches."""


class ModelFormatError(LLMError, ValueError):
    """A file that is not what it claims to be: corrupt safetensors header, truncated GGUF, bad config.json."""


class UnsupportedError(LLMError, NotImplementedError):
    """Something valid elsewhere that this library does not implement (an architecture, a quant type)."""


class TokenizerError(LLMError, ValueError):
    """A tokenizer that cannot be built or used (missing tokenizer.json, a chat template that fails)."""


class GenerationError(LLMError, ValueError):
    """Invalid generation settings (e.g. ``top_p`` outside ``(0, 1]``) or a prompt longer than the context."""


class HubError(LLMError):
    """Base class of download and cache errors."""


class ModelNotFoundError(HubError, KeyError):
    """A registry name, repository or file that does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message; show it as written
        return str(self.args[0]) if self.args else ""


class GatedModelError(HubError, PermissionError):
    """The server answered 401/403: the model is gated or private and needs a token (``HF_TOKEN``)."""


class OfflineError(HubError, ConnectionError):
    """``AXON_HUB_OFFLINE=1`` is set and the file is not in the cache."""


class DownloadError(HubError, OSError):
    """A download failed after its retries (connection cut, timeout, server error)."""


class ChecksumError(HubError, ValueError):
    """A downloaded file whose size or sha256 is not the expected one; it was not kept."""


__all__ = [
    "LLMError", "ConfigError", "InputError", "CheckpointError", "ModelFormatError",
    "UnsupportedError", "TokenizerError", "GenerationError", "HubError",
    "ModelNotFoundError", "GatedModelError", "OfflineError", "DownloadError", "ChecksumError",
]
