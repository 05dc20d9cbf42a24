from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FallbackReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FALLBACK_REASON_UNSPECIFIED: _ClassVar[FallbackReason]
    FALLBACK_REASON_INPUT_FLAGGED: _ClassVar[FallbackReason]
    FALLBACK_REASON_OUTPUT_FLAGGED: _ClassVar[FallbackReason]
    FALLBACK_REASON_RETRIEVAL_MISS: _ClassVar[FallbackReason]
    FALLBACK_REASON_STAGE_TIMEOUT: _ClassVar[FallbackReason]
    FALLBACK_REASON_BACKEND_UNAVAILABLE: _ClassVar[FallbackReason]
    FALLBACK_REASON_OVERLOAD: _ClassVar[FallbackReason]
    FALLBACK_REASON_INVALID_OUTPUT: _ClassVar[FallbackReason]
    FALLBACK_REASON_UNGROUNDED: _ClassVar[FallbackReason]

class AnswerMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ANSWER_MODE_UNSPECIFIED: _ClassVar[AnswerMode]
    ANSWER_MODE_GENERATED: _ClassVar[AnswerMode]
    ANSWER_MODE_EXTRACTIVE: _ClassVar[AnswerMode]
    ANSWER_MODE_CANNED: _ClassVar[AnswerMode]

class DocumentStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DOCUMENT_STATUS_UNSPECIFIED: _ClassVar[DocumentStatus]
    DOCUMENT_STATUS_COMMITTED: _ClassVar[DocumentStatus]
    DOCUMENT_STATUS_FAILED: _ClassVar[DocumentStatus]
FALLBACK_REASON_UNSPECIFIED: FallbackReason
FALLBACK_REASON_INPUT_FLAGGED: FallbackReason
FALLBACK_REASON_OUTPUT_FLAGGED: FallbackReason
FALLBACK_REASON_RETRIEVAL_MISS: FallbackReason
FALLBACK_REASON_STAGE_TIMEOUT: FallbackReason
FALLBACK_REASON_BACKEND_UNAVAILABLE: FallbackReason
FALLBACK_REASON_OVERLOAD: FallbackReason
FALLBACK_REASON_INVALID_OUTPUT: FallbackReason
FALLBACK_REASON_UNGROUNDED: FallbackReason
ANSWER_MODE_UNSPECIFIED: AnswerMode
ANSWER_MODE_GENERATED: AnswerMode
ANSWER_MODE_EXTRACTIVE: AnswerMode
ANSWER_MODE_CANNED: AnswerMode
DOCUMENT_STATUS_UNSPECIFIED: DocumentStatus
DOCUMENT_STATUS_COMMITTED: DocumentStatus
DOCUMENT_STATUS_FAILED: DocumentStatus

class RunRequest(_message.Message):
    __slots__ = ("pipeline", "query", "session_id")
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    pipeline: str
    query: str
    session_id: str
    def __init__(self, pipeline: _Optional[str] = ..., query: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class Citation(_message.Message):
    __slots__ = ("document_id", "text", "score", "chunk_index")
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    text: str
    score: float
    chunk_index: int
    def __init__(self, document_id: _Optional[str] = ..., text: _Optional[str] = ..., score: _Optional[float] = ..., chunk_index: _Optional[int] = ...) -> None: ...

class StageTiming(_message.Message):
    __slots__ = ("stage", "duration_ms")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    stage: str
    duration_ms: float
    def __init__(self, stage: _Optional[str] = ..., duration_ms: _Optional[float] = ...) -> None: ...

class RunResponse(_message.Message):
    __slots__ = ("answer", "citations", "pipeline", "pipeline_version", "fallback", "fallback_reason", "request_id", "timings", "outputs", "replace_streamed", "failed_stage", "cached", "usage", "answer_mode")
    class OutputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    CITATIONS_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    REPLACE_STREAMED_FIELD_NUMBER: _ClassVar[int]
    FAILED_STAGE_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    ANSWER_MODE_FIELD_NUMBER: _ClassVar[int]
    answer: str
    citations: _containers.RepeatedCompositeFieldContainer[Citation]
    pipeline: str
    pipeline_version: int
    fallback: bool
    fallback_reason: FallbackReason
    request_id: str
    timings: _containers.RepeatedCompositeFieldContainer[StageTiming]
    outputs: _containers.ScalarMap[str, str]
    replace_streamed: bool
    failed_stage: str
    cached: bool
    usage: TokenUsage
    answer_mode: AnswerMode
    def __init__(self, answer: _Optional[str] = ..., citations: _Optional[_Iterable[_Union[Citation, _Mapping]]] = ..., pipeline: _Optional[str] = ..., pipeline_version: _Optional[int] = ..., fallback: _Optional[bool] = ..., fallback_reason: _Optional[_Union[FallbackReason, str]] = ..., request_id: _Optional[str] = ..., timings: _Optional[_Iterable[_Union[StageTiming, _Mapping]]] = ..., outputs: _Optional[_Mapping[str, str]] = ..., replace_streamed: _Optional[bool] = ..., failed_stage: _Optional[str] = ..., cached: _Optional[bool] = ..., usage: _Optional[_Union[TokenUsage, _Mapping]] = ..., answer_mode: _Optional[_Union[AnswerMode, str]] = ...) -> None: ...

class TokenUsage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class RunStreamRequest(_message.Message):
    __slots__ = ("pipeline", "query", "session_id")
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    pipeline: str
    query: str
    session_id: str
    def __init__(self, pipeline: _Optional[str] = ..., query: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class RunStreamResponse(_message.Message):
    __slots__ = ("delta", "final")
    DELTA_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    delta: str
    final: RunResponse
    def __init__(self, delta: _Optional[str] = ..., final: _Optional[_Union[RunResponse, _Mapping]] = ...) -> None: ...

class ListPipelinesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PipelineInfo(_message.Message):
    __slots__ = ("name", "version", "is_default", "description", "stages")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    is_default: bool
    description: str
    stages: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., is_default: _Optional[bool] = ..., description: _Optional[str] = ..., stages: _Optional[_Iterable[str]] = ...) -> None: ...

class ListPipelinesResponse(_message.Message):
    __slots__ = ("pipelines",)
    PIPELINES_FIELD_NUMBER: _ClassVar[int]
    pipelines: _containers.RepeatedCompositeFieldContainer[PipelineInfo]
    def __init__(self, pipelines: _Optional[_Iterable[_Union[PipelineInfo, _Mapping]]] = ...) -> None: ...

class Document(_message.Message):
    __slots__ = ("document_id", "text", "source")
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    text: str
    source: str
    def __init__(self, document_id: _Optional[str] = ..., text: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class IngestRequest(_message.Message):
    __slots__ = ("documents",)
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    def __init__(self, documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ...) -> None: ...

class DocumentResult(_message.Message):
    __slots__ = ("document_id", "chunks_stored", "chunks_dropped", "status", "error", "error_code")
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_STORED_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    chunks_stored: int
    chunks_dropped: int
    status: DocumentStatus
    error: str
    error_code: str
    def __init__(self, document_id: _Optional[str] = ..., chunks_stored: _Optional[int] = ..., chunks_dropped: _Optional[int] = ..., status: _Optional[_Union[DocumentStatus, str]] = ..., error: _Optional[str] = ..., error_code: _Optional[str] = ...) -> None: ...

class IngestResponse(_message.Message):
    __slots__ = ("documents",)
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedCompositeFieldContainer[DocumentResult]
    def __init__(self, documents: _Optional[_Iterable[_Union[DocumentResult, _Mapping]]] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("request_id", "rating", "comment")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    rating: int
    comment: str
    def __init__(self, request_id: _Optional[str] = ..., rating: _Optional[int] = ..., comment: _Optional[str] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("matched_request",)
    MATCHED_REQUEST_FIELD_NUMBER: _ClassVar[int]
    matched_request: bool
    def __init__(self, matched_request: _Optional[bool] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CircuitInfo(_message.Message):
    __slots__ = ("service", "state")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    service: str
    state: str
    def __init__(self, service: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...

class ServiceInfo(_message.Message):
    __slots__ = ("name", "status", "replicas", "replica_nodes")
    class ReplicasEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    REPLICA_NODES_FIELD_NUMBER: _ClassVar[int]
    name: str
    status: str
    replicas: _containers.ScalarMap[str, int]
    replica_nodes: _containers.RepeatedCompositeFieldContainer[ReplicaInfo]
    def __init__(self, name: _Optional[str] = ..., status: _Optional[str] = ..., replicas: _Optional[_Mapping[str, int]] = ..., replica_nodes: _Optional[_Iterable[_Union[ReplicaInfo, _Mapping]]] = ...) -> None: ...

class ReplicaInfo(_message.Message):
    __slots__ = ("replica_id", "state", "node_id", "node_ip", "node_labels", "node_resources", "head")
    class NodeLabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class NodeResourcesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_IP_FIELD_NUMBER: _ClassVar[int]
    NODE_LABELS_FIELD_NUMBER: _ClassVar[int]
    NODE_RESOURCES_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    state: str
    node_id: str
    node_ip: str
    node_labels: _containers.ScalarMap[str, str]
    node_resources: _containers.ScalarMap[str, float]
    head: bool
    def __init__(self, replica_id: _Optional[str] = ..., state: _Optional[str] = ..., node_id: _Optional[str] = ..., node_ip: _Optional[str] = ..., node_labels: _Optional[_Mapping[str, str]] = ..., node_resources: _Optional[_Mapping[str, float]] = ..., head: _Optional[bool] = ...) -> None: ...

class CollectionInfo(_message.Message):
    __slots__ = ("service", "name", "state", "points", "pipelines", "detail")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    PIPELINES_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    service: str
    name: str
    state: str
    points: int
    pipelines: _containers.RepeatedScalarFieldContainer[str]
    detail: str
    def __init__(self, service: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[str] = ..., points: _Optional[int] = ..., pipelines: _Optional[_Iterable[str]] = ..., detail: _Optional[str] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("name", "weights")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    weights: _containers.ScalarMap[int, int]
    def __init__(self, name: _Optional[str] = ..., weights: _Optional[_Mapping[int, int]] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("pipelines", "routes", "circuits", "services", "last_reload_error", "collections")
    PIPELINES_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    CIRCUITS_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    LAST_RELOAD_ERROR_FIELD_NUMBER: _ClassVar[int]
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    pipelines: _containers.RepeatedCompositeFieldContainer[PipelineInfo]
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    circuits: _containers.RepeatedCompositeFieldContainer[CircuitInfo]
    services: _containers.RepeatedCompositeFieldContainer[ServiceInfo]
    last_reload_error: str
    collections: _containers.RepeatedCompositeFieldContainer[CollectionInfo]
    def __init__(self, pipelines: _Optional[_Iterable[_Union[PipelineInfo, _Mapping]]] = ..., routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ..., circuits: _Optional[_Iterable[_Union[CircuitInfo, _Mapping]]] = ..., services: _Optional[_Iterable[_Union[ServiceInfo, _Mapping]]] = ..., last_reload_error: _Optional[str] = ..., collections: _Optional[_Iterable[_Union[CollectionInfo, _Mapping]]] = ...) -> None: ...
