"""The HTTP API's contract: request and response models, the patterns requests must match, the
media types and the status codes of every route.

The OpenAPI schema at ``/openapi.json`` is generated from these definitions, and the server
validates requests with the same ones (pydantic models, FastAPI parameters), so the schema states
every rule the server enforces: a client generated from it, or a fuzzer reading it, sees the
service as it is. Rules that depend on how the server was started (``--api-keys``,
``--two-stage off``, ``--max-top-k``) are built per app by ``search_request_model`` and
``create_app``.
"""
# No `from __future__ import annotations`: pydantic and FastAPI read these annotations at runtime.
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

from runtime.scoring import LEVELS
from runtime.search import DEFAULT_TOP_K, DEFAULT_WINDOWS_PER_FILE, GROUP_BY
from runtime.search.filters import COMPARISONS, FilterError, parse_filter
from runtime.serve.settings import ZERO_WIDTH, Limits

# ------------------------------------------------------------------------------------------------
# patterns (JSON Schema `pattern`: unanchored, written to mean the same in ECMA-262, Python `re` and
# the Rust `regex` crate that pydantic validates with)
# ------------------------------------------------------------------------------------------------
# Characters that carry no text for the tokenizer: a query made only of them is refused. These are
# exactly the characters c for which the query c alone is refused by the tokenizer
# (`ucofia.data.tokenizer`: `str.strip()` removes it, or the cleaning -- ftfy, which drops control
# and deprecated format characters, then the Unicode whitespace collapse -- leaves nothing);
# tests/test_serve_schema.py checks that over the whole Basic Multilingual Plane (no character
# beyond it is blank).
BLANK_CHARACTERS = (r"\x00-\x20\x7F\x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u206A-\u206F\u3000"
                    r"\uFEFF\uFFF9-\uFFFC")
# Characters that carry no text though the tokenizer keeps them (zero-width space and joiners, word
# joiner, Mongolian vowel separator): the service counts them as blank too.
ZERO_WIDTH_CHARACTERS = "".join(f"\\u{ord(c):04X}" for c in ZERO_WIDTH)
# A query must hold at least one character that is neither blank nor zero-width.
QUERY_PATTERN = f"[^{BLANK_CHARACTERS}{ZERO_WIDTH_CHARACTERS}]"
QUERY_RULE = "only whitespace, control or zero-width characters; give it some text"
# What the pattern cannot see: the tokenizer's cleaning also unescapes HTML entities (twice) and drops
# terminal escape sequences, so a query such as `&nbsp;` alone has no text left; it is refused with
# 422 too (stated in the schema's description of the field).
QUERY_CLEANING_NOTE = ("Besides the pattern, a query must keep some text after the tokenizer's cleaning (ftfy, "
                       "HTML unescaping, whitespace collapse; zero-width characters count as blank): one made only "
                       "of escaped whitespace such as `&nbsp;` or of terminal escape sequences is refused with 422.")

# `Range: bytes=...` (RFC 9110, 14.1.2): one or more of FIRST-LAST, FIRST- and -SUFFIX, comma-separated.
_BYTE_RANGE = r"(?:[0-9]+-[0-9]*|-[0-9]+)"
RANGE_PATTERN = rf"^[Bb][Yy][Tt][Ee][Ss]=[ \t]*{_BYTE_RANGE}(?:[ \t]*,[ \t]*{_BYTE_RANGE})*[ \t]*$"
RANGE_RULE = "not a byte range: send bytes=FIRST-LAST, bytes=FIRST- or bytes=-SUFFIX (several comma-separated)"

# The message of a 422 for a string that does not match one of the patterns above.
PATTERN_RULES = {QUERY_PATTERN: QUERY_RULE, RANGE_PATTERN: RANGE_RULE}

# Media types of the source files. The container format FFmpeg recognised when the file was indexed
# (the entry's `container`: the demuxer's name) decides the family; the file name only chooses within
# it (a .mov is video/quicktime, not video/mp4), so a video named .html is never served as a page.
# Entries indexed before `container` was recorded fall back to the extension, by a fixed table of
# video types (never the host's mime.types, which calls .ts a Qt translation file).
CONTAINER_TYPES: dict[str, tuple[str, dict[str, str]]] = {
    "mov,mp4,m4a,3gp,3g2,mj2": ("video/mp4", {".mov": "video/quicktime", ".qt": "video/quicktime",
                                              ".3gp": "video/3gpp", ".3g2": "video/3gpp2"}),
    "matroska,webm": ("video/x-matroska", {".webm": "video/webm"}),
    "avi": ("video/x-msvideo", {}),
    "mpeg": ("video/mpeg", {}),
    "mpegts": ("video/mp2t", {}),
    "asf": ("video/x-ms-wmv", {}),
    "flv": ("video/x-flv", {}),
    "ogg": ("video/ogg", {}),
    "gif": ("image/gif", {}),
}
MEDIA_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".mkv": "video/x-matroska",
               ".webm": "video/webm", ".avi": "video/x-msvideo", ".mpg": "video/mpeg", ".mpeg": "video/mpeg",
               ".wmv": "video/x-ms-wmv", ".flv": "video/x-flv", ".3gp": "video/3gpp", ".ts": "video/mp2t",
               ".gif": "image/gif"}
OTHER_MEDIA_TYPE = "application/octet-stream"
# Every type the media route can answer with.
SOURCE_MEDIA_TYPES = sorted({*MEDIA_TYPES.values(), OTHER_MEDIA_TYPE,
                             *(t for first, by_name in CONTAINER_TYPES.values() for t in (first, *by_name.values()))})
MULTIPART_RANGES = "multipart/byteranges"
THUMBNAIL_TYPE = "image/jpeg"
# The schema of a file in a response (bytes).
BINARY = {"schema": {"type": "string", "format": "binary"}}


def media_type_of(suffix: str, container: str | None = None) -> str:
    """The Content-Type of a source file: by the ``container`` recorded at indexing (the suffix
    choosing within its family); without one (older entries) by the suffix; else octet-stream."""
    suffix = suffix.lower()
    if container is not None:
        default, by_name = CONTAINER_TYPES.get(container, (OTHER_MEDIA_TYPE, {}))
        return by_name.get(suffix, default)
    return MEDIA_TYPES.get(suffix, OTHER_MEDIA_TYPE)


# ------------------------------------------------------------------------------------------------
# strict JSON types: what JSON Schema's `type` allows, no coercion
# ------------------------------------------------------------------------------------------------
def _whole_number(value: Any) -> Any:
    """JSON Schema counts 17.0 as an integer: pass it on as 17 (strict int refuses any float)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# An integer as JSON Schema means it: 17 and 17.0, never true, "17" or 17.5.
JsonInt = Annotated[int, Strict(), BeforeValidator(_whole_number)]


def _two_stage_off(value: Any) -> Any:
    if value is True:
        raise ValueError("two-stage search is off on this server (--two-stage off); leave two_stage out or set it "
                         "to false")
    if not isinstance(value, bool):  # Literal[False] alone would take 0, as 0 == False in Python
        raise ValueError("must be a boolean")
    return value


# ------------------------------------------------------------------------------------------------
# the search filter: its grammar as JSON Schema (added to the schema's components by tidy_schema),
# checked with runtime.search.filters.parse_filter
# ------------------------------------------------------------------------------------------------
def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_SCALAR = {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}
_ORDERED = {"anyOf": [{"type": "string"}, {"type": "number"}]}
FILTER_SCHEMAS: dict[str, dict[str, Any]] = {
    "Filter": {
        "type": "object",
        "description": "MongoDB-style filter (as Chroma's `where`): `{field: value}`, `{field: {operator: value}}`, "
                       "`{\"$and\": [...]}`, `{\"$or\": [...]}`, `{\"$not\": {...}}`; several keys in one object "
                       "must all hold. Fields: the videos' metadata and the index's recorded fields (id, duration_s, "
                       "fps, width, height, frames, bytes, mtime, container; on windows file_id, start, end). Besides "
                       "this grammar, a value must be of a type its field holds (422 otherwise); a field no video has "
                       "matches nothing; a filter matching no video gives empty results.",
        "properties": {"$and": {"type": "array", "minItems": 1, "items": _ref("Filter")},
                       "$or": {"type": "array", "minItems": 1, "items": _ref("Filter")},
                       "$not": _ref("Filter")},
        "patternProperties": {"^[^$]": {"anyOf": [_SCALAR, _ref("FilterOperators")]}},
        "additionalProperties": False,
    },
    "FilterOperators": {
        "type": "object",
        "minProperties": 1,
        "description": "operators on one field, all of which must hold",
        "properties": {**dict.fromkeys(("$eq", "$ne"), _SCALAR),
                       **{op: _ORDERED for op in COMPARISONS if op not in ("$eq", "$ne")},
                       "$in": {"type": "array", "items": _SCALAR}, "$nin": {"type": "array", "items": _SCALAR},
                       "$exists": {"type": "boolean"}, "$not": _ref("FilterOperators")},
        "additionalProperties": False,
    },
}
FILTER_EXAMPLE = {"$and": [{"channel": "news"}, {"year": {"$gte": 2020}}]}


def _check_filter(value: Any) -> Any:
    """The filter as sent, once its grammar is checked (the message names the place)."""
    if value is not None:
        try:
            parse_filter(value, "filter")
        except FilterError as exc:
            raise ValueError(str(exc).removeprefix("filter: ").removeprefix("filter.")) from None
    return value


# pydantic resolves every $ref it writes, so the field's schema is a placeholder that tidy_schema
# replaces with a reference to the Filter component.
FILTER_PLACEHOLDER = "x-ucofia-filter"
SearchFilter = Annotated[dict[str, Any] | None, AfterValidator(_check_filter),
                         WithJsonSchema({"type": "object", FILTER_PLACEHOLDER: True})]


# An indexed video id as a request names it (ids are what the video list gave; windows FILE@START-END).
VideoId = Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"[^\x00-\x1F\x7F]")]


# ------------------------------------------------------------------------------------------------
# the search request
# ------------------------------------------------------------------------------------------------
def search_request_model(limits: Limits, two_stage_setting: str) -> type[BaseModel]:
    """The body of ``POST /v1/search`` under these limits and ``--two-stage`` setting."""
    Query = Annotated[str, StringConstraints(min_length=1, max_length=limits.max_query_chars,
                                             pattern=QUERY_PATTERN)]
    if two_stage_setting == "off":
        TwoStage = Annotated[Literal[False], BeforeValidator(_two_stage_off)] | None
        two_stage_doc = ("false or null: exhaustive search (two-stage search is off on this server, "
                         "`--two-stage off`)")
    else:
        TwoStage = StrictBool | None
        two_stage_doc = ("true: FAISS shortlist + fused re-rank; false: exhaustive; null: the server's choice by "
                         "gallery size")
    GroupBy = Literal.__getitem__(GROUP_BY) | None

    class SearchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={
            "examples": [{"queries": ["a dog runs on the beach"], "top_k": 10}, {"like": "video7", "top_k": 10}],
            # not both (one of them is the server's rule too; openapi-python-client makes no model of
            # an object schema with anyOf / oneOf branches, so "at least one" is stated in the
            # descriptions only)
            "not": {"required": ["queries", "like"]}})

        # Optional, not nullable: a request leaves out the kind of query it does not use.
        queries: list[Query] = Field(  # type: ignore[assignment]
            None, min_length=1, max_length=limits.max_queries,
            description=f"1 to {limits.max_queries} texts of 1 to {limits.max_query_chars} characters, each with "
                        f"at least one character that is not whitespace or a control character (the pattern). "
                        f"{QUERY_CLEANING_NOTE} Give `queries` or `like`, not both.")
        like: VideoId = Field(  # type: ignore[assignment]
            None, description="more like this: rank the videos by their similarity to this indexed video (the "
                              "cosine of the video-level features; its results have no level scores). Give "
                              "`queries` or `like`, not both; two_stage, group_by and windows_per_file do not "
                              "apply to it")
        include_self: StrictBool = Field(False, description="with `like`: keep the video itself in its results")
        top_k: JsonInt = Field(DEFAULT_TOP_K, ge=1, le=limits.max_top_k, description="results per query")
        two_stage: TwoStage = Field(None, description=two_stage_doc)
        group_by: GroupBy = Field(
            None, description="on an index of time windows: 'file' (the default there) ranks each file once by its "
                              "best window and lists its best windows; 'window' ranks windows on their own. Ignored "
                              "on an index of whole files. As `ucofia-run search --group-by`.")
        windows_per_file: JsonInt = Field(DEFAULT_WINDOWS_PER_FILE, ge=1, le=limits.max_windows_per_file,
                                          description="grouped by file: best windows listed per file")
        offset: JsonInt = Field(0, ge=0, le=limits.max_top_k - 1,
                                description=f"results skipped: the answer holds ranks offset + 1 to offset + top_k "
                                            f"(ranks stay absolute); offset + top_k must be at most "
                                            f"{limits.max_top_k} (422)")
        filter: SearchFilter = Field(None, description="only videos (or windows) this filter matches are ranked; "
                                                       "see the Filter schema")
        allow_partial: StrictBool = Field(False, description="`serve --ray`: when a shard of the gallery does not "
                                                             "answer in time, answer from the others (`partial`: true, "
                                                             "`missing_shards` named) rather than 503")

        @model_validator(mode="after")
        def _one_kind_of_query(self) -> "SearchRequest":
            if (self.queries is None) == (self.like is None):
                raise ValueError("give `queries` (texts) or `like` (an indexed video id), one of them")
            return self

        @model_validator(mode="after")
        def _page_fits(self) -> "SearchRequest":
            if self.offset + self.top_k > limits.max_top_k:
                raise ValueError(f"offset + top_k is {self.offset + self.top_k}; it must be at most "
                                 f"{limits.max_top_k} (--max-top-k)")
            return self

    return SearchRequest


# ------------------------------------------------------------------------------------------------
# responses
# ------------------------------------------------------------------------------------------------
class ErrorResponse(BaseModel):
    error: str = Field(description="What is wrong, and how to fix it")


# A metadata value: what a .jsonl / .csv video list may give (runtime.video_list).
Metadatum = str | bool | int | float | list[str]
METADATA_DOC = ("the fields of the video's row in the `--videos` list besides id and path (strings, numbers, "
                "booleans, lists of strings); {} when it gave none")


class Links(BaseModel):
    video: str = Field(description="GET: the video's metadata (a path under the server's root path)")
    thumbnail: str = Field(description="GET: a JPEG thumbnail (signed for the searching key when auth is on)")
    media: str = Field(description="GET: the source file, with HTTP Range (signed for the searching key when auth "
                                   "is on)")


class WindowHit(BaseModel):
    video_id: str = Field(description="the window's id (FILE@START-END)")
    start: float | None = Field(None, description="the window's start (seconds)")
    end: float | None = Field(None, description="the window's end (seconds)")
    score: float = Field(description="fused score of the window")
    levels: dict[str, float] = Field(description=f"the level scores: {', '.join(LEVELS)}")
    links: Links


class Hit(BaseModel):
    rank: int
    video_id: str = Field(description="the indexed row: a video, or a time window (grouped by file: the file's "
                                      "best window)")
    file_id: str | None = Field(None, description="on an index of time windows: the file the window is of")
    start: float | None = Field(None, description="on an index of time windows: the window's start (seconds)")
    end: float | None = Field(None, description="on an index of time windows: the window's end (seconds)")
    score: float = Field(description="fused score: mean over the levels of (level score + its SK bias)")
    levels: dict[str, float] = Field(description=f"the level scores: {', '.join(LEVELS)} (empty for a query by "
                                                 f"example, whose score is the cosine of the video-level features)")
    metadata: dict[str, Metadatum] = Field(description=METADATA_DOC)
    entry: dict[str, Any] = Field(description="what the index recorded about the video (duration_s, fps, "
                                              "width, height, ...; time windows add start/end)")
    links: Links
    windows: list[WindowHit] | None = Field(None, description="grouped by file: the file's best windows, best "
                                                              "first (at most windows_per_file)")


class QueryResult(BaseModel):
    query: str | None = Field(None, description="the text query (null for a query by example)")
    like: str | None = Field(None, description="`like`: the indexed video the results are like")
    query_video: str | None = Field(None, description="/v1/search/by-video: the uploaded file's name")
    truncated: bool = Field(False, description="the query was longer than the text encoder's max_words tokens")
    results: list[Hit]


def describe_request_model(limits: Limits) -> type[BaseModel]:
    """The body of ``POST /v1/describe`` under these limits."""
    Caption = Annotated[str, StringConstraints(min_length=1, max_length=limits.max_query_chars,
                                               pattern=QUERY_PATTERN)]

    class DescribeRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={
            "examples": [{"video_ids": ["video7"], "captions": ["a dog runs", "a man cooks"], "top_k": 2}]})

        video_ids: list[VideoId] = Field(min_length=1, max_length=limits.max_queries,
                                         description="indexed video ids (on an index of time windows also file ids: "
                                                     "each caption then takes the file's best window)")
        captions: list[Caption] = Field(min_length=1, max_length=limits.max_queries,
                                        description=f"the candidate captions. {QUERY_CLEANING_NOTE}")
        top_k: JsonInt = Field(DEFAULT_TOP_K, ge=1, le=limits.max_top_k, description="captions per video")

    return DescribeRequest


class CaptionWindow(BaseModel):
    video_id: str
    start: float | None = None
    end: float | None = None


class CaptionHit(BaseModel):
    rank: int
    caption: str
    score: float = Field(description="the fused score search gives this (caption, video) pair")
    levels: dict[str, float] = Field(description=f"the level scores: {', '.join(LEVELS)}")
    window: CaptionWindow | None = Field(None, description="a file of an index of windows: its best window")


class VideoCaptions(BaseModel):
    video_id: str
    results: list[CaptionHit]


class DescribeResponse(BaseModel):
    top_k: int
    results: list[VideoCaptions]
    snapshot: "SnapshotInfo"


class SnapshotInfo(BaseModel):
    version: int = Field(description="loads of the index since the server started (1 = first)")
    state: str = Field(description="the index state's digest (its first 16 hex digits): the same for every replica "
                                   "serving the same version of the index")
    videos: int
    loaded_at: float
    load_seconds: float


class BatchInfo(BaseModel):
    queries: int = Field(description="queries encoded and scored together with this request's")
    requests: int = Field(description="requests coalesced into that batch")


class Timings(BaseModel):
    queue_ms: float
    encode_ms: float
    score_ms: float
    total_ms: float


class SearchResponse(BaseModel):
    mode: Literal["exhaustive", "two_stage"]
    group_by: Literal.__getitem__(GROUP_BY) | None = Field(
        description="how the rows of an index of time windows were ranked; null on an index of whole files")
    top_k: int
    offset: int = Field(description="results skipped: the records are ranks offset + 1 to offset + top_k")
    results: list[QueryResult]
    partial: bool = Field(False, description="some shards did not answer (only with `allow_partial`): the results "
                                             "rank the videos of the others")
    missing_shards: list[int] | None = Field(None, description="with `partial`: the shards that did not answer")
    snapshot: SnapshotInfo
    batch: BatchInfo
    timings: Timings


class VideoInfo(BaseModel):
    id: str
    row: int
    has_media: bool = Field(description="the index recorded the source file (needed for thumbnail and media)")
    metadata: dict[str, Metadatum] = Field(description=METADATA_DOC)
    entry: dict[str, Any]
    links: Links


class ReloadRequest(BaseModel):
    """The body of ``POST /v1/admin/reload``: an empty JSON object (a JSON body is what makes a
    cross-site form unable to send the request)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{}]})


class ReloadResponse(BaseModel):
    reloaded: bool
    trigger: str
    seconds: float
    changed: bool
    snapshot: SnapshotInfo
    previous: SnapshotInfo


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadyChecks(BaseModel):
    sessions: bool = Field(description="the text encoder and scorer sessions are loaded")
    index: bool = Field(description="the index is open and still on disk")
    batcher: bool = Field(description="the batcher is running")
    shards: bool | None = Field(None, description="`serve --ray` only: every shard answered its last call")


class ShardsInfo(BaseModel):
    up: int = Field(description="shards that answered their last call")
    total: int = Field(description="shards the gallery is cut into")


class ReadyResponse(BaseModel):
    ready: bool
    checks: ReadyChecks
    snapshot: SnapshotInfo
    shards: ShardsInfo | None = Field(None, description="`serve --ray` only: shards up of all")


class LimitsInfo(BaseModel):
    max_queries: int
    max_query_chars: int
    max_top_k: int
    max_windows_per_file: int
    max_body_bytes: int


class MetadataField(BaseModel):
    name: str = Field(description="the field's name, as a filter names it")
    kind: Literal["string", "number", "boolean", "list", "mixed"] = Field(
        description="what its videos hold: strings, numbers, booleans, lists of strings, or several of these "
                    "(mixed)")
    videos: int = Field(description="rows (videos, or windows) holding a value of the field")
    values: list[str] | None = Field(description="a string or list field's distinct values (list items), sorted, "
                                                 "when there are at most 50; else null")
    min: float | None = Field(description="a number field's smallest value; else null")
    max: float | None = Field(description="a number field's largest value; else null")


class InfoResponse(BaseModel):
    service: Literal["ucofia"]
    api_version: str
    auth_required: bool = Field(description="the server was started with --api-keys")
    snapshot: SnapshotInfo
    levels: list[str]
    two_stage: Literal["auto", "on", "off"]
    two_stage_min_videos: int
    limits: LimitsInfo


class FieldsResponse(BaseModel):
    snapshot: SnapshotInfo
    fields: list[MetadataField] = Field(
        description="the fields of the videos' metadata (from a .jsonl / .csv `--videos` list) in this snapshot, in "
                    "the order they first appear: what a filter can name besides the recorded fields")


# ------------------------------------------------------------------------------------------------
# status codes (besides each route's 2xx), with their bodies and headers
# ------------------------------------------------------------------------------------------------
def _header(description: str, required: bool = True, pattern: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"} if pattern is None else {"type": "string", "pattern": pattern}
    return {"description": description, "required": required, "schema": schema}


def error(description: str, headers: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """An error response: ``{"error": ...}`` as JSON, with these headers."""
    out: dict[str, Any] = {"model": ErrorResponse, "description": description}
    if headers:
        out["headers"] = headers
    return out


def tidy_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """FastAPI's schema of this app with two of FastAPI's defaults that do not hold here put right.

    * The 422 it lists on every route with parameters: this app answers a validation error with
      ``ErrorResponse`` (never FastAPI's ``HTTPValidationError``), and each route whose
      parameters can fail validation lists its own 422.
    * ``null`` as a value of an optional query or header parameter (from its ``str | None``
      type): such a parameter is left out when absent, and ``null`` cannot be sent.

    and adds what every operation may answer (``EVERY_OPERATION``: 421 for a Host not allowed) and
    the search filter's grammar (``FILTER_SCHEMAS``, referred to by the search request).
    """
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            for status, response in EVERY_OPERATION.items():
                responses.setdefault(str(status), {
                    "description": response["description"],
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}})
            content = responses.get("422", {}).get("content", {}).get("application/json", {})
            if content.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                del responses["422"]
            for parameter in operation.get("parameters", []):
                value = parameter.get("schema", {})
                branches = [b for b in value.get("anyOf", []) if b != {"type": "null"}]
                if not parameter.get("required") and len(branches) == 1 < len(value["anyOf"]):
                    parameter["schema"] = {**{k: v for k, v in value.items() if k != "anyOf"}, **branches[0]}
    schemas = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    search = schemas.get("SearchRequest", {}).get("properties", {})
    if search.get("filter", {}).get(FILTER_PLACEHOLDER):
        search["filter"] = {"anyOf": [_ref("Filter"), {"type": "null"}], "default": None,
                            "description": search["filter"].get("description", ""), "examples": [FILTER_EXAMPLE]}
        schemas.update(FILTER_SCHEMAS)
    return schema


INTERNAL = {500: error("an internal error or a failed search: the message gives the request id, the server log "
                       "the cause (never sent to the client)")}
# Every operation may answer these (added to each by tidy_schema).
EVERY_OPERATION = {421: error("the Host header names a host this server does not answer for (`--allowed-host`)")}
CROSS_ORIGIN = "a cross-origin request: its Origin is neither this server nor a `--cors-origin`"
NOT_MODIFIED = {304: {"description": "If-None-Match names the current ETag: the cached copy is still good",
                      "headers": {"ETag": {"description": "the entity tag", "required": True,
                                           "schema": {"type": "string"}}}}}
BODY_ERRORS = {
    400: error("the body is not valid JSON, or Content-Length is not a number"),
    413: error("the body is over the limit (`/v1/info` `limits.max_body_bytes`), by Content-Length or counted"),
    415: error("a body that is not `Content-Type: application/json`"),
}
UNAUTHORIZED = {401: error("the server needs an API key: none was sent, it is not a Bearer key, or it is unknown",
                           {"WWW-Authenticate": _header("`Bearer`, or `Bearer error=\"invalid_token\"` for an "
                                                        "unknown key", pattern="^Bearer")})}


def forbidden(what: str) -> dict[int, dict[str, Any]]:
    return {403: error(what)}


RETRY_AFTER = {"Retry-After": _header("seconds to wait before retrying", pattern="^[0-9]+$")}
CONTENT_RANGE = {"Content-Range": _header("`bytes */SIZE`: the file's size", pattern="^bytes \\*/[0-9]+$")}
NOT_FOUND_VIDEO = error("no video with this id in the current snapshot")
