"""asyncllm: asynchronous LLM request processing on AWS SQS.

Submit a chat request to an SQS request queue and get its id at once; workers
run the handler you decorated on an `AsyncLLM` app and publish an
`AsyncResponse` to a response queue, where the result is looked up by id.
"""

from ._app import AsyncLLM, AsyncResult, Handler
from ._broker import Broker, MemoryBroker, Received, SQSBroker
from ._collector import Collector
from ._config import Settings
from ._errors import (
    AsyncLLMError,
    ConfigurationError,
    HandlerError,
    InvalidMessage,
    PayloadTooLarge,
    QueueSetupError,
    RequestFailed,
    ResultError,
    ResultExpired,
    ResultNotFound,
    ResultTimeout,
    RetryAfter,
    TerminalError,
    TransportError,
    UnknownHandler,
)
from ._models import (
    AsyncRequest,
    AsyncResponse,
    ChatMessage,
    ChatRequest,
    ChatResponse,
    Choice,
    ErrorInfo,
    Usage,
    now_timestamp,
    parse_timestamp,
)
from ._providers import ProviderError, parse_duration, provider_error
from ._queues import QueueOptions, QueueSetup
from ._results import (
    MemoryResultStore,
    ResultStore,
    SQLiteResultStore,
    Status,
    StoredResult,
)
from ._version import __version__
from ._webhooks import (
    UnsafeWebhookTarget,
    WebhookError,
    WebhookSender,
    WebhookSettings,
    WebhookVerificationError,
    sign_webhook,
    verify_webhook,
)
from ._wire import decode_request, decode_response, encode
from ._worker import Worker

__all__ = [
    "AsyncLLM",
    "AsyncLLMError",
    "AsyncRequest",
    "AsyncResponse",
    "AsyncResult",
    "Broker",
    "ChatMessage",
    "Collector",
    "ChatRequest",
    "ChatResponse",
    "Choice",
    "ConfigurationError",
    "ErrorInfo",
    "Handler",
    "HandlerError",
    "InvalidMessage",
    "MemoryBroker",
    "MemoryResultStore",
    "PayloadTooLarge",
    "ProviderError",
    "QueueOptions",
    "QueueSetup",
    "QueueSetupError",
    "Received",
    "RequestFailed",
    "ResultError",
    "ResultExpired",
    "ResultNotFound",
    "ResultStore",
    "ResultTimeout",
    "RetryAfter",
    "SQLiteResultStore",
    "SQSBroker",
    "Settings",
    "Status",
    "StoredResult",
    "TerminalError",
    "TransportError",
    "UnknownHandler",
    "UnsafeWebhookTarget",
    "Usage",
    "WebhookError",
    "WebhookSender",
    "WebhookSettings",
    "WebhookVerificationError",
    "Worker",
    "__version__",
    "decode_request",
    "decode_response",
    "encode",
    "now_timestamp",
    "parse_duration",
    "parse_timestamp",
    "provider_error",
    "sign_webhook",
    "verify_webhook",
]
