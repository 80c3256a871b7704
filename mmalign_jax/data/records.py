"""Records: the one on-disk schema every stage reads and writes, validated on read.

A record is one prompt (images + conversation) with its sampled candidate responses and,
once annotated, their five HelpSteer scores (see ``shared/DESIGN.md``, section Records)::

    {"id": "lrv-10023", "images": ["vg/2367.jpg"],
     "conversation": [{"role": "user", "content": "<image>\\nWhat is unusual here?"}],
     "responses": [{"text": "...", "source": "llava-1.5-13b@T0.7",
                    "scores": {"helpfulness": 3, "correctness": 4, "coherence": 4,
                               "complexity": 2, "verbosity": 1}}]}

Why validate so hard, and on read: a bad row found at training time (a missing image, a
score of 5, an ``<image>`` placeholder without an image) costs a TPU job; found here it
costs one line of a message that names the file, the line, the record id, the field and
what to do about it. Lenient loading exists for real data sets, where a few bad rows are
normal — but it never drops anything silently: every skipped row goes to a reject file.

Three input formats are read into this one schema (auto-detected per row, or ``fmt=``):

``ours``
    The schema above. ``id`` and ``conversation`` are required; ``images``, ``responses``
    and ``meta`` default to empty. Unknown keys are errors (put extras under ``meta``), so
    a typo such as ``"respones"`` cannot silently produce a record with no candidates.
``llava``
    LLaVA conversation data: ``{"id", "image": str | "images": [str], "conversations":
    [{"from": "human"|"gpt"|"system", "value": str}]}``. This is *SFT* data: the whole
    conversation, assistant turns included, stays in ``conversation`` (``gpt`` becomes role
    ``assistant``) and ``responses`` is empty — the last ``gpt`` turn is a training target,
    not a candidate to be ranked. Other top-level keys go to ``meta``.
``dpo``
    The published DPO pair file: ``id``, ``image`` (or ``images``), ``question`` (or
    ``prompt``), ``chosen``, ``rejected``, optional reference log-probs
    (``ref_chosen_logp``, ``ref_rejected_logp``, ``ref_chosen_avg_logp``, ...). Becomes a
    record whose single user turn is the question (``"<image>\\n"`` prepended when there is
    an image and the text lacks the placeholder) and two responses with
    ``meta={'role': 'chosen'}`` / ``{'role': 'rejected'}``; every other field (all
    ``ref_*`` log-probs included) is kept in the record's ``meta``. ``pairs.make_pairs``
    passes such records through as the pair they already are.

JSONL is the native container; a file whose first character is ``[`` is read as one JSON
array (LLaVA and the published DPO data ship that way) and positions are then reported as
``item N`` instead of ``line N``. Files are UTF-8 (a byte-order mark is skipped); JSONL is
decoded line by line, so a line that is not UTF-8 is one rejected row (its line and the
file offset of the bad byte named), never a lost file.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

log = logging.getLogger(__name__)

ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
ROLES = ("user", "assistant", "system")
IMAGE_TOKEN = "<image>"
MIN_SCORE, MAX_SCORE = 0, 4
FORMATS = ("auto", "ours", "llava", "dpo")

_LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant",
                "assistant": "assistant", "system": "system"}


class RecordError(ValueError):
    """One problem with one record, located as precisely as we can.

    Attributes: ``file``, ``line`` (1-based line, or item index for JSON-array files),
    ``record_id``, ``field`` (a path such as ``responses[2].scores.correctness``),
    ``problem`` and ``hint`` (what to do). ``reason`` is the message without the location,
    as written to reject files.
    """

    def __init__(self, problem: str, *, field: str | None = None,
                 record_id: str | None = None, hint: str | None = None,
                 file: str | None = None, line: int | None = None, unit: str = "line"):
        self.problem, self.field, self.record_id, self.hint = problem, field, record_id, hint
        self.file, self.line, self.unit = file, line, unit
        super().__init__(self._message())

    @property
    def reason(self) -> str:
        text = f"{self.field}: {self.problem}" if self.field else self.problem
        return f"{text} — {self.hint}" if self.hint else text

    def _message(self) -> str:
        loc = ""
        if self.file is not None:
            loc = str(self.file)
            if self.line is not None:
                loc += f":{self.line}" if self.unit == "line" else f" ({self.unit} {self.line})"
        elif self.line is not None:
            loc = f"{self.unit} {self.line}"
        rid = f"record {self.record_id!r}" if self.record_id is not None else "record ?"
        return f"{loc + ': ' if loc else ''}{rid}: {self.reason}"

    def located(self, file: str | None, line: int | None, unit: str = "line") -> "RecordError":
        """The same error with the file/line filled in (parsers do not know them)."""
        return RecordError(self.problem, field=self.field, record_id=self.record_id,
                           hint=self.hint, file=file, line=line, unit=unit)


# --------------------------------------------------------------------------- dataclasses
@dataclass
class Response:
    """One candidate answer. ``scores`` is None until annotated; then all five
    ATTRIBUTES, each an int in 0–4. ``meta`` carries anything else (e.g. ``role`` for
    DPO-format pairs, ``ref_logp`` precomputed under the reference model)."""
    text: str
    source: str | None = None
    scores: dict[str, int] | None = None
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        out: dict[str, Any] = {"text": self.text}
        if self.source is not None:
            out["source"] = self.source
        if self.scores is not None:
            out["scores"] = dict(self.scores)   # as is: a bad key fails on read, not here
        if self.meta:
            out["meta"] = self.meta
        return out

    @classmethod
    def from_json(cls, obj: Any, *, record_id: str | None = None,
                  field_prefix: str = "response") -> "Response":
        return _parse_response(obj, record_id, field_prefix)


@dataclass
class Record:
    """One prompt: images (paths relative to an image root), the conversation up to the
    turn being answered, candidate responses, free-form meta. SFT examples are records
    whose conversation ends with the assistant turn and whose ``responses`` is empty."""
    id: str
    images: list[str] = field(default_factory=list)
    conversation: list[dict] = field(default_factory=list)
    responses: list[Response] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        out: dict[str, Any] = {
            "id": self.id, "images": list(self.images),
            "conversation": [{"role": t["role"], "content": t["content"]}
                             for t in self.conversation],
            "responses": [r.to_json() for r in self.responses]}
        if self.meta:
            out["meta"] = self.meta
        return out

    @classmethod
    def from_json(cls, obj: Any, fmt: str = "auto") -> "Record":
        """Parse and validate one row of any supported format (files on disk unchecked;
        see ``validate_record(image_root=...)``)."""
        rec = parse_row(obj, fmt)
        validate_record(rec)
        return rec


@dataclass
class LoadResult:
    records: list[Record]
    rejected: list[tuple[int, str | None, str]]   # (line, record id or None, reason)
    n_read: int
    reject_path: str | None = None


# --------------------------------------------------------------------------- parsing
def _err(problem, field=None, rid=None, hint=None):
    return RecordError(problem, field=field, record_id=rid, hint=hint)


def _type_name(x) -> str:
    return "null" if x is None else type(x).__name__


def _get_id(obj: dict) -> str:
    if "id" not in obj:
        raise _err("missing", "id", None, "give every record a unique string id")
    rid = obj["id"]
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise _err(f"must be a string, got {_type_name(rid)}", "id", None,
                   "use a unique string id")
    rid = str(rid)   # integer ids (some LLaVA files) are accepted and stored as strings
    if not rid:
        raise _err("is empty", "id", None, "use a unique non-empty string id")
    return rid


def _expect(obj: dict, key: str, types, rid: str, *, required=True, default=None,
            prefix: str = "", hint: str | None = None):
    path = f"{prefix}{key}"
    if key not in obj:
        if required:
            raise _err("missing", path, rid, hint or f"add the '{key}' field")
        return default
    val = obj[key]
    if isinstance(val, bool) or not isinstance(val, types):
        want = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise _err(f"must be {want}, got {_type_name(val)}", path, rid,
                   hint or f"fix the type of '{key}'")
    return val


def _str_list(val, path, rid) -> list[str]:
    out = []
    for i, x in enumerate(val):
        if not isinstance(x, str) or not x:
            raise _err(f"must be a non-empty string (image path), got {x!r}", f"{path}[{i}]",
                       rid, "list image paths relative to the image root")
        out.append(x)
    return out


def _parse_scores(val, rid, path) -> dict[str, int] | None:
    if val is None:
        return None
    if not isinstance(val, dict):
        raise _err(f"must be an object of attribute -> int, got {_type_name(val)}", path, rid,
                   "write scores as {\"helpfulness\": 3, ...} or null if not annotated")
    for k in val:
        if k not in ATTRIBUTES:
            raise _err(f"unknown attribute {k!r}", f"{path}.{k}", rid,
                       f"use only {', '.join(ATTRIBUTES)} (lowercase)")
    out = {}
    for a in ATTRIBUTES:
        if a not in val:
            raise _err("score missing", f"{path}.{a}", rid,
                       f"give all five attributes ({', '.join(ATTRIBUTES)}) or set scores "
                       "to null and re-annotate")
        v = val[a]
        if isinstance(v, bool) or not isinstance(v, int):
            raise _err(f"score must be an integer, got {v!r}", f"{path}.{a}", rid,
                       f"use an integer {MIN_SCORE}–{MAX_SCORE}")
        if not MIN_SCORE <= v <= MAX_SCORE:
            raise _err(f"score {v} outside {MIN_SCORE}–{MAX_SCORE}", f"{path}.{a}", rid,
                       f"clip or re-annotate: HelpSteer scores are {MIN_SCORE}–{MAX_SCORE}")
        out[a] = v
    return out


_RESPONSE_KEYS = ("text", "source", "scores", "meta")


def _parse_response(obj, rid, path) -> Response:
    if not isinstance(obj, dict):
        raise _err(f"must be an object, got {_type_name(obj)}", path, rid,
                   "write each response as {\"text\": ..., \"scores\": {...}}")
    for k in obj:
        if k not in _RESPONSE_KEYS:
            raise _err(f"unknown key {k!r}", f"{path}.{k}", rid,
                       f"responses take {', '.join(_RESPONSE_KEYS)}; put extras under 'meta'")
    text = _expect(obj, "text", str, rid, prefix=path + ".")
    source = obj.get("source")
    if source is not None and not isinstance(source, str):
        raise _err(f"must be a string or null, got {_type_name(source)}", path + ".source", rid)
    scores = _parse_scores(obj.get("scores"), rid, path + ".scores")
    meta = _expect(obj, "meta", dict, rid, required=False, default={}, prefix=path + ".")
    return Response(text=text, source=source, scores=scores, meta=dict(meta))


_RECORD_KEYS = ("id", "images", "conversation", "responses", "meta")


def _parse_ours(obj: dict) -> Record:
    rid = _get_id(obj)
    for k in obj:
        if k not in _RECORD_KEYS:
            raise _err(f"unknown key {k!r}", k, rid,
                       f"records take {', '.join(_RECORD_KEYS)}; put extras under 'meta'")
    images = _str_list(_expect(obj, "images", list, rid, required=False, default=[]),
                       "images", rid)
    conv_raw = _expect(obj, "conversation", list, rid)
    conversation = []
    for i, turn in enumerate(conv_raw):
        p = f"conversation[{i}]"
        if not isinstance(turn, dict):
            raise _err(f"must be an object, got {_type_name(turn)}", p, rid,
                       "write turns as {\"role\": ..., \"content\": ...}")
        for k in turn:
            if k not in ("role", "content"):
                raise _err(f"unknown key {k!r}", f"{p}.{k}", rid, "turns take role and content")
        role = _expect(turn, "role", str, rid, prefix=p + ".")
        content = _expect(turn, "content", str, rid, prefix=p + ".")
        conversation.append({"role": role, "content": content})
    responses = [_parse_response(r, rid, f"responses[{i}]") for i, r in
                 enumerate(_expect(obj, "responses", list, rid, required=False, default=[]))]
    meta = _expect(obj, "meta", dict, rid, required=False, default={})
    return Record(rid, images, conversation, responses, dict(meta))


def _llava_images(obj: dict, rid: str, consumed: set) -> list[str]:
    if "images" in obj:
        consumed.add("images")
        return _str_list(_expect(obj, "images", list, rid), "images", rid)
    if "image" in obj:
        consumed.add("image")
        img = obj["image"]
        if img is None:
            return []
        if isinstance(img, list):
            return _str_list(img, "image", rid)
        if not isinstance(img, str) or not img:
            raise _err(f"must be a non-empty string (image path), got {img!r}", "image", rid,
                       "give the image path relative to the image root")
        return [img]
    return []


def _parse_llava(obj: dict) -> Record:
    rid = _get_id(obj)
    consumed = {"id", "conversations"}
    images = _llava_images(obj, rid, consumed)
    conversation = []
    for i, turn in enumerate(_expect(obj, "conversations", list, rid)):
        p = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise _err(f"must be an object, got {_type_name(turn)}", p, rid,
                       "write turns as {\"from\": \"human\"|\"gpt\", \"value\": ...}")
        who = _expect(turn, "from", str, rid, prefix=p + ".")
        if who not in _LLAVA_ROLES:
            raise _err(f"role {who!r} not one of human/gpt/system", p + ".from", rid,
                       "use 'human' for the user and 'gpt' for the assistant")
        value = _expect(turn, "value", str, rid, prefix=p + ".")
        conversation.append({"role": _LLAVA_ROLES[who], "content": value})
    meta = {k: v for k, v in obj.items() if k not in consumed}
    return Record(rid, images, conversation, [], meta)


def _parse_dpo(obj: dict) -> Record:
    rid = _get_id(obj)
    consumed = {"id", "chosen", "rejected"}
    images = _llava_images(obj, rid, consumed)
    qkey = "prompt" if "question" not in obj and "prompt" in obj else "question"
    consumed.add(qkey)
    question = _expect(obj, qkey, str, rid, hint="DPO rows need 'question' (or 'prompt')")
    if images and IMAGE_TOKEN not in question:
        question = f"{IMAGE_TOKEN}\n{question}"
    chosen = _expect(obj, "chosen", str, rid)
    rejected = _expect(obj, "rejected", str, rid)
    meta = {k: v for k, v in obj.items() if k not in consumed}
    return Record(rid, images, [{"role": "user", "content": question}],
                  [Response(chosen, meta={"role": "chosen"}),
                   Response(rejected, meta={"role": "rejected"})], meta)


_PARSERS = {"ours": _parse_ours, "llava": _parse_llava, "dpo": _parse_dpo}


def detect_format(obj: Any) -> str:
    """'ours' | 'llava' | 'dpo', from the keys of one row."""
    if not isinstance(obj, dict):
        raise _err(f"a record must be a JSON object, got {_type_name(obj)}", None, None,
                   "write one JSON object per line")
    if "conversation" in obj or "responses" in obj:
        return "ours"
    if "conversations" in obj:
        return "llava"
    if "chosen" in obj or "rejected" in obj:
        return "dpo"
    rid = str(obj["id"]) if isinstance(obj.get("id"), (str, int)) else None
    raise _err("cannot tell the format", None, rid,
               "rows need 'conversation' (ours), 'conversations' (LLaVA) or "
               "'chosen'/'rejected' (DPO); or pass fmt=")


def parse_row(obj: Any, fmt: str = "auto") -> Record:
    """Convert one decoded JSON row to a Record (schema checks only)."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if not isinstance(obj, dict):
        raise _err(f"a record must be a JSON object, got {_type_name(obj)}", None, None,
                   "write one JSON object per line")
    return _PARSERS[detect_format(obj) if fmt == "auto" else fmt](obj)


# --------------------------------------------------------------------------- validation
def _check_image(path: str) -> str | None:
    """None if PIL can open and verify the file and its header's size is within the pixel
    budget (``images.pixel_budget_problem``: checked before anything is decoded), else why
    not."""
    if not os.path.isfile(path):
        return "not found"
    import warnings

    from PIL import Image

    from .images import pixel_budget_problem
    try:
        with warnings.catch_warnings():   # the pixel budget decides, not PIL's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                problem = pixel_budget_problem(im.size)
                if problem is None:
                    im.verify()
    except Exception as e:  # PIL raises many types for broken files
        return f"unreadable ({type(e).__name__}: {e})"
    return problem


def validate_record(rec: Record, image_root: str | None = None,
                    _image_cache: dict | None = None) -> None:
    """Semantic checks beyond types; raises RecordError on the first problem.

    Roles; ``<image>`` placeholders in the conversation == number of images; responses
    answer a final user turn and are non-empty (and contain no ``<image>``, which the
    tokenizer would expand into image tokens); image files exist and decode when
    ``image_root`` is given.
    """
    rid = rec.id
    if not rec.conversation:
        raise _err("is empty", "conversation", rid, "give at least the user turn")
    for i, turn in enumerate(rec.conversation):
        if turn["role"] not in ROLES:
            raise _err(f"role {turn['role']!r} not one of {'/'.join(ROLES)}",
                       f"conversation[{i}].role", rid, "use user, assistant or system")
    n_tok = sum(t["content"].count(IMAGE_TOKEN) for t in rec.conversation)
    if n_tok != len(rec.images):
        raise _err(f"{n_tok} '{IMAGE_TOKEN}' placeholder(s) in the conversation but "
                   f"{len(rec.images)} image(s)", "conversation", rid,
                   f"put exactly one '{IMAGE_TOKEN}' per image where it belongs in the text")
    if rec.responses and rec.conversation[-1]["role"] != "user":
        raise _err(f"last turn is {rec.conversation[-1]['role']!r} but the record has "
                   "responses", f"conversation[{len(rec.conversation) - 1}].role", rid,
                   "responses answer the final user turn; end the conversation with it")
    for i, r in enumerate(rec.responses):
        if not r.text.strip():
            raise _err("empty response text", f"responses[{i}].text", rid,
                       "drop the response or regenerate it")
        if IMAGE_TOKEN in r.text:
            raise _err(f"response contains '{IMAGE_TOKEN}'", f"responses[{i}].text", rid,
                       "remove the placeholder: it would be expanded into image tokens")
    if image_root is not None:
        cache = {} if _image_cache is None else _image_cache
        for i, img in enumerate(rec.images):
            full = os.path.join(image_root, img)
            if full not in cache:
                cache[full] = _check_image(full)
            if cache[full] is not None:
                raise _err(f"image {full} {cache[full]}", f"images[{i}]", rid,
                           "fix the path (relative to image_root) or replace the file")


# --------------------------------------------------------------------------- files
_BOM = b"\xef\xbb\xbf"


def _undecodable(body: bytes, line_offset: int, e: UnicodeDecodeError) -> RecordError:
    """The error of a line that is not UTF-8: where the bad byte is in the file (what
    `head -c`/`xxd` need; Python's own position is within the decoded chunk) and, when the
    rest of the line still parses, the record's id."""
    rid = None
    try:
        obj = json.loads(body.decode("utf-8", "replace"))
        if isinstance(obj, dict) and isinstance(obj.get("id"), (str, int)):
            rid = str(obj["id"])
    except ValueError:
        pass
    return _err(f"not valid UTF-8: byte 0x{body[e.start]:02x} at offset "
                f"{line_offset + e.start} of the file (byte {e.start + 1} of the line)",
                None, rid, "re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`) or "
                           "fix or delete the line")


def _rows(path: str) -> Iterator[tuple[int, str, Any, str, int | None]]:
    """(position, raw text, decoded object or a RecordError, unit, byte offset of the line)
    per row. JSONL is read as bytes and decoded line by line, so one undecodable byte is one
    bad line, not a lost file."""
    with open(path, "rb") as f:
        head = f.read(4096)
        skip = len(_BOM) if head.startswith(_BOM) else 0    # tolerate a byte-order mark
        f.seek(0)
        if head[skip:].lstrip().startswith(b"["):
            data = f.read()[skip:]
            try:
                items = json.loads(data.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise RecordError(
                    f"not valid UTF-8: byte 0x{data[e.start]:02x} at offset "
                    f"{skip + e.start} of the file", file=path,
                    hint="re-save the file as UTF-8; JSON arrays cannot be read row by row, "
                         "convert to JSONL to skip bad rows") from None
            except json.JSONDecodeError as e:
                raise RecordError(f"not valid JSON ({e})", file=path,
                                  hint="fix the file; JSON arrays cannot be read row by "
                                       "row, convert to JSONL to skip bad rows") from None
            if not isinstance(items, list):
                raise RecordError(f"a JSON array file must hold a list, got "
                                  f"{_type_name(items)}", file=path,
                                  hint="write one JSON object per line (JSONL) instead")
            for i, item in enumerate(items, 1):
                yield i, json.dumps(item, ensure_ascii=False), item, "item", None
            return
        offset = 0
        for n, line in enumerate(f, 1):
            start, offset = offset, offset + len(line)
            body = line[skip:] if n == 1 else line
            body_offset = start + (skip if n == 1 else 0)
            try:
                raw = body.decode("utf-8")
            except UnicodeDecodeError as e:
                raw = body.decode("utf-8", "backslashreplace").rstrip("\n").rstrip("\r")
                yield n, raw, _undecodable(body, body_offset, e), "line", start
                continue
            raw = raw.rstrip("\n").rstrip("\r")
            if not raw.strip():
                continue          # blank lines are not records
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as e:
                obj = _err(f"malformed JSON ({e.msg} at column {e.colno})", None, None,
                           "fix or delete the line")
            yield n, raw, obj, "line", start


def iter_jsonl(path: str) -> Iterator[dict]:
    """Decoded rows of a JSONL (or JSON-array) file; RecordError with file:line on a
    malformed line. For schema-checked Records use ``load_records``."""
    for n, _, obj, unit, _ in _rows(path):
        if isinstance(obj, RecordError):
            raise obj.located(path, n, unit)
        yield obj


def load_records(path: str, image_root: str | None = None, strict: bool = True,
                 reject_path: str | None = None, fmt: str = "auto") -> LoadResult:
    """Read and validate every row of ``path`` (JSONL or a JSON array, any supported format).

    strict: the first bad row raises RecordError (file, line, id, field, what to do).
    lenient: bad rows — malformed JSON, schema or semantic errors, unreadable images,
    duplicate ids (the first occurrence is kept) — are skipped, returned in
    ``rejected`` and written to ``reject_path`` (default ``<path>.rejects.jsonl``) as
    ``{"file", "line", "offset", "id", "reason", "raw"}`` (``line`` is the item index for
    JSON-array files, whose ``offset`` is null; ``offset`` is the byte offset of the line's
    start; a line that is not UTF-8 is one such row, its ``raw`` with the bad bytes as
    ``\\xNN``); a one-line summary is logged. Blank lines are not records and are not
    counted.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    records: list[Record] = []
    rejected: list[tuple[int, str | None, str]] = []
    reject_rows: list[dict] = []
    seen: dict[str, int] = {}
    cache: dict[str, str | None] = {}
    n_read = 0
    for n, raw, obj, unit, offset in _rows(path):
        n_read += 1
        try:
            if isinstance(obj, RecordError):
                raise obj
            rec = parse_row(obj, fmt)
            validate_record(rec, image_root, cache)
            if rec.id in seen:
                raise _err(f"duplicate id (first at {unit} {seen[rec.id]})", "id", rec.id,
                           "make ids unique")
        except RecordError as e:
            err = e.located(path, n, unit)
            if strict:
                raise err from None
            rejected.append((n, err.record_id, err.reason))
            reject_rows.append({"file": path, "line": n, "offset": offset,
                                "id": err.record_id, "reason": err.reason, "raw": raw})
            continue
        seen[rec.id] = n
        records.append(rec)
    out_path = None
    if not strict:
        out_path = reject_path or f"{path}.rejects.jsonl"
        # Write when there is something to report; also empty a stale file from an earlier
        # run so the reject file always describes the latest load.
        if reject_rows or os.path.exists(out_path):
            write_jsonl(out_path, reject_rows)
    if rejected:
        log.warning("%s: kept %d, skipped %d (see %s)", path, len(records), len(rejected),
                    out_path)
    else:
        log.info("%s: kept %d, skipped 0", path, len(records))
    return LoadResult(records, rejected, n_read, out_path)


def write_jsonl(path: str, rows: Iterable[Any]) -> str:
    """Write rows (dicts, or objects with ``to_json``) as JSONL atomically: a temp file
    in the same folder, fsync, then ``os.replace`` — a crash never leaves half a file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                if hasattr(row, "to_json"):
                    row = row.to_json()
                elif dataclasses.is_dataclass(row):
                    row = dataclasses.asdict(row)
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def write_records(path: str, records: Iterable[Record]) -> str:
    """Write records in our format, atomically (see ``write_jsonl``)."""
    return write_jsonl(path, records)
