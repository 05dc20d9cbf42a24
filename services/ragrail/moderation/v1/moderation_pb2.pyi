from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Category(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CATEGORY_UNSPECIFIED: _ClassVar[Category]
    CATEGORY_TOXICITY: _ClassVar[Category]
    CATEGORY_PROMPT_INJECTION: _ClassVar[Category]
    CATEGORY_PII: _ClassVar[Category]
CATEGORY_UNSPECIFIED: Category
CATEGORY_TOXICITY: Category
CATEGORY_PROMPT_INJECTION: Category
CATEGORY_PII: Category

class ModerateRequest(_message.Message):
    __slots__ = ("texts", "categories")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    categories: _containers.RepeatedScalarFieldContainer[Category]
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., categories: _Optional[_Iterable[_Union[Category, str]]] = ...) -> None: ...

class CategoryScore(_message.Message):
    __slots__ = ("category", "score", "threshold", "flagged")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    category: Category
    score: float
    threshold: float
    flagged: bool
    def __init__(self, category: _Optional[_Union[Category, str]] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., flagged: _Optional[bool] = ...) -> None: ...

class ModerationResult(_message.Message):
    __slots__ = ("scores", "flagged", "flagged_categories", "pii_types")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    PII_TYPES_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedCompositeFieldContainer[CategoryScore]
    flagged: bool
    flagged_categories: _containers.RepeatedScalarFieldContainer[Category]
    pii_types: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, scores: _Optional[_Iterable[_Union[CategoryScore, _Mapping]]] = ..., flagged: _Optional[bool] = ..., flagged_categories: _Optional[_Iterable[_Union[Category, str]]] = ..., pii_types: _Optional[_Iterable[str]] = ...) -> None: ...

class ModerateResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ModerationResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ModerationResult, _Mapping]]] = ...) -> None: ...
