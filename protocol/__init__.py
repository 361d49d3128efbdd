"""celeriac's sans-IO Celery protocol layer: bytes and dicts in, typed values out.

Nothing here performs I/O, reads a clock or logs. Every decoder raises
:class:`MalformedMessage` (or a subclass) for bad input, and nothing else.
"""

from ._fields import shared_text
from .envelopes import (
    Envelope,
    amqp_properties,
    decode_envelope,
    decode_sqs_body,
    encode_envelope,
    encode_sqs_body,
    from_amqp,
)
from .errors import (
    CeleriacError,
    ContentDisallowed,
    EncodeError,
    LimitExceeded,
    MalformedMessage,
    ProtocolError,
)
from .excinfo import ExceptionInfo
from .limits import DEFAULT_LIMITS, Limits
from .results import (
    ChordPart,
    ExtendedInfo,
    ResultKeys,
    ResultMeta,
    ResultRef,
    decode_chord_part,
    decode_group,
    decode_result,
    encode_chord_part,
    encode_group,
    encode_result,
)
from .serialization import DEFAULT_ACCEPT, AcceptPolicy, Serializer, serializer_for
from .signature import Signature
from .states import EXCEPTION_STATES, PROPAGATE_STATES, READY_STATES, UNREADY_STATES, State
from .task import TaskMessage
from .taskcodec import decode_task, encode_task
from .wire import WireMessage

__all__ = [
    "DEFAULT_ACCEPT",
    "DEFAULT_LIMITS",
    "EXCEPTION_STATES",
    "PROPAGATE_STATES",
    "READY_STATES",
    "UNREADY_STATES",
    "AcceptPolicy",
    "CeleriacError",
    "ChordPart",
    "ContentDisallowed",
    "EncodeError",
    "Envelope",
    "ExceptionInfo",
    "ExtendedInfo",
    "LimitExceeded",
    "Limits",
    "MalformedMessage",
    "ProtocolError",
    "ResultKeys",
    "ResultMeta",
    "ResultRef",
    "Serializer",
    "Signature",
    "State",
    "TaskMessage",
    "WireMessage",
    "amqp_properties",
    "decode_chord_part",
    "decode_envelope",
    "decode_group",
    "decode_result",
    "decode_sqs_body",
    "decode_task",
    "encode_chord_part",
    "encode_envelope",
    "encode_group",
    "encode_result",
    "encode_sqs_body",
    "encode_task",
    "from_amqp",
    "serializer_for",
    "shared_text",
]
