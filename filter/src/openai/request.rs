//! The OpenAI completion request body, as the gateway sees it.
//!
//! The body is walked once: the top-level object's keys are matched after
//! unescaping (so `"mo\u0064el"` is `model`, as the upstream will read it),
//! the handful of fields the gateway needs are kept as borrowed raw JSON and
//! typed afterwards, and every other value is skipped without allocating.
//!
//! Invariants:
//! - A body that names one of the fields we read (`model`, the budget
//!   fields, `stream`, `stream_options`, `n`, `best_of`, `n_cmpl`,
//!   `prompt`, `messages`) twice is rejected: a gateway that charges or
//!   routes on the first `model` while the upstream serves the last one
//!   would be a bypass.
//! - Every field a server may read as a number of completions multiplies
//!   the reservation (llama-server reads `n_cmpl`, and `n` only when it is
//!   absent).
//! - Every field a server may read as the completion's budget is a budget
//!   field ([`CompletionRequest::requested_max_tokens`]): one the gateway
//!   does not know could let the model generate past what was reserved.
//! - [`rewrite_completion_request`] edits values in place and copies every
//!   other byte of the body unchanged, so what the upstream receives is what the
//!   client sent plus the gateway's limits; its output reads back through
//!   [`parse_completion_request`] with the new values.
//!
//! The object walker ([`object_fields`]) is shared with the usage and SSE
//! parsers, which read response bodies the same way.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::endpoint::Endpoint;

mod media;
mod responses;

/// The fields of a completion request that the gateway acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletionRequest<'a> {
    /// `model`: a non-empty string, borrowed from the body unless it was escaped.
    pub model: Cow<'a, str>,
    /// `max_tokens` (legacy name, still the one most servers read).
    pub max_tokens: Option<u64>,
    /// `max_completion_tokens` (current OpenAI name).
    pub max_completion_tokens: Option<u64>,
    /// `max_output_tokens`: the Responses API's budget (read on every
    /// endpoint: a server that takes it anywhere is capped by it too).
    pub max_output_tokens: Option<u64>,
    /// `n_predict`: llama.cpp's budget, which llama-server reads before
    /// `max_tokens` (its OpenAI layer passes unknown fields through); any
    /// negative value means "until the context is full".
    pub n_predict: Option<i64>,
    /// A budget field is present as `null`, which servers read as "no
    /// limit": the body must carry the reserved budget there.
    pub null_budget: bool,
    /// `stream`; absent or null means false.
    pub stream: bool,
    /// `stream_options.include_usage == true`.
    pub include_usage: bool,
    /// Completions generated per prompt: the largest of `n`, `best_of` and
    /// llama.cpp's `n_cmpl` (which llama-server reads before `n`; each a
    /// positive integer, absent means 1). `max_tokens` bounds each.
    pub choices: u64,
    /// Prompts in the request: `/v1/completions` takes an array of prompts
    /// (an array of token ids is one prompt); anything else is one.
    pub prompts: u64,
    /// Content parts of `messages` whose tokens the body's bytes do not
    /// bound (images, files, video; see `media`).
    pub media_parts: u64,
    /// `service_tier`: the processing tier OpenAI bills the tokens at
    /// (`priority` at about twice the rate); null is absent.
    pub service_tier: Option<String>,
    /// A Responses API request (`/v1/responses`): its servers read the
    /// budget from `max_output_tokens`, and report usage in every stream.
    pub responses: bool,
}

impl CompletionRequest<'_> {
    /// Whether a stream's usage is the client's to see without the gateway
    /// asking for it: the client asked (`stream_options.include_usage`), or
    /// the API always sends it (a Responses stream ends with it). When it
    /// is not, the gateway asks for it and takes it out again.
    pub fn usage_wanted(&self) -> bool {
        self.include_usage || self.responses
    }

    /// How many completions of up to `max_tokens` each the request can make.
    pub fn completions(&self) -> u64 {
        self.choices.saturating_mul(self.prompts)
    }

    /// The completion budget the client asked for. This is the one home of
    /// the rule for the budget fields, `max_tokens`,
    /// `max_completion_tokens` and llama.cpp's `n_predict`:
    /// - one set: it is the budget (a negative `n_predict` names none);
    /// - several set: the smallest wins; and since servers disagree on
    ///   which field they read (vLLM and SGLang prefer
    ///   `max_completion_tokens`, llama-server `n_predict`), when they
    ///   differ the body is rewritten so that every one carries the value
    ///   reserved ([`Self::budget_needs_rewrite`] says when;
    ///   [`rewrite_completion_request`] sets every field present).
    pub fn requested_max_tokens(&self) -> Option<u64> {
        let n_predict = self.n_predict.and_then(|n| u64::try_from(n).ok());
        requested_budget(self.max_tokens, self.max_completion_tokens)
            .into_iter()
            .chain(self.max_output_tokens)
            .chain(n_predict)
            .min()
    }

    /// The body must be rewritten to carry the reserved budget even where
    /// that is the one it asked for: its budget fields name different
    /// values (a negative `n_predict`, "unlimited", differs from any), or
    /// it names only `n_predict`, which servers other than llama.cpp ignore
    /// (the rule is [`Self::requested_max_tokens`]'s).
    pub fn budget_needs_rewrite(&self) -> bool {
        let Some(budget) = self.requested_max_tokens() else {
            return self.n_predict.is_some();
        };
        if self.null_budget {
            return true;
        }
        // The field the endpoint's servers read must carry it.
        let own = if self.responses {
            BudgetField::MaxOutputTokens
        } else {
            BudgetField::MaxTokens
        };
        own.lacking_in([
            self.max_tokens.is_some(),
            self.max_completion_tokens.is_some(),
            self.max_output_tokens.is_some(),
        ]) || [
            self.max_tokens,
            self.max_completion_tokens,
            self.max_output_tokens,
        ]
        .into_iter()
        .flatten()
        .any(|v| v != budget)
            || self
                .n_predict
                .is_some_and(|n| u64::try_from(n).ok() != Some(budget))
    }

    /// A budget of 0 is refused rather than reserved as nothing: servers
    /// differ in how they read it (some take it as "no limit"; llama.cpp's
    /// `n_predict: 0` evaluates the prompt and generates nothing).
    pub fn check_budget_fields(&self) -> Result<(), RequestError> {
        if self.n_predict == Some(0) {
            return Err(RequestError::InvalidField {
                field: "n_predict",
                expected: EXPECT_N_PREDICT,
            });
        }
        for (field, value) in [
            ("max_tokens", self.max_tokens),
            ("max_completion_tokens", self.max_completion_tokens),
            ("max_output_tokens", self.max_output_tokens),
        ] {
            if value == Some(0) {
                return Err(RequestError::InvalidField {
                    field,
                    expected: "a positive integer or null",
                });
            }
        }
        Ok(())
    }
}

/// The rule of [`CompletionRequest::requested_max_tokens`] on the two
/// fields' values, for a reader of the body that is not this one (a
/// provider's translation).
pub fn requested_budget(
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
) -> Option<u64> {
    match (max_tokens, max_completion_tokens) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Why a request body was refused. Every variant is a client error (400,
/// OpenAI `invalid_request_error`).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// The body is not valid JSON (or has bytes after the object).
    #[error("malformed JSON body: {message}")]
    Malformed {
        /// serde_json's message, including the position.
        message: String,
        /// 1-based line of the error (0 when unknown).
        line: usize,
        /// 1-based column of the error (0 when unknown).
        column: usize,
    },
    /// Valid JSON, but not an object.
    #[error("request body must be a JSON object")]
    NotAnObject,
    /// No `model` (or `"model": null`).
    #[error("missing required field `model`")]
    MissingModel,
    /// A field the gateway reads has the wrong type or an out-of-range value.
    #[error("invalid `{field}`: expected {expected}")]
    InvalidField {
        field: &'static str,
        expected: &'static str,
    },
    /// A field the gateway reads appears more than once.
    #[error("duplicate field `{0}`")]
    DuplicateField(String),
    /// A field the gateway reads is spelled in another case: servers that
    /// match keys regardless of case would read it as the field.
    #[error(
        "field `{0}` is spelled in another case; servers differ on whether that is the same field"
    )]
    CaseVariantField(String),
}

impl From<serde_json::Error> for RequestError {
    fn from(err: serde_json::Error) -> Self {
        RequestError::Malformed {
            message: err.to_string(),
            line: err.line(),
            column: err.column(),
        }
    }
}

impl From<ObjectError> for RequestError {
    fn from(err: ObjectError) -> Self {
        match err {
            ObjectError::NotAnObject => RequestError::NotAnObject,
            ObjectError::Malformed(err) => err.into(),
        }
    }
}

/// Top-level fields read from a request, in the order of [`RequestFields`].
const FIELDS: [&str; 18] = [
    "model",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "n_predict",
    "stream",
    "stream_options",
    "n",
    "best_of",
    "n_cmpl",
    "prompt",
    "messages",
    "chat_template",
    "chat_template_kwargs",
    "service_tier",
    "mm_processor_kwargs",
    "media_io_kwargs",
    "input",
];
const STREAM_OPTIONS: [&str; 2] = ["include_usage", "continuous_usage_stats"];
const INCLUDE_USAGE_PATH: &str = "stream_options.include_usage";
const CONTINUOUS_USAGE_PATH: &str = "stream_options.continuous_usage_stats";

const EXPECT_MODEL: &str = "a non-empty string";
const EXPECT_COUNT: &str = "a non-negative integer or null";
const EXPECT_BOOL: &str = "a boolean or null";
const EXPECT_OBJECT: &str = "an object or null";
const EXPECT_POSITIVE: &str = "a positive integer or null";
const EXPECT_PROMPT: &str = "a string, an array of strings, or an array of token arrays";
const EXPECT_STRING: &str = "a string or null";
const EXPECT_N_PREDICT: &str = "a positive integer, a negative one (no limit) or null";
const EXPECT_RESPONSES_BUDGET: &str =
    "absent: a Responses request's completion budget is `max_output_tokens`";
const EXPECT_NO_CONTINUOUS_USAGE: &str =
    "false or null: the gateway charges a stream's final usage, and vLLM's per-chunk usage counts one choice and one prompt, which a stream cut short would be charged";
const EXPECT_NO_PROCESSOR_KWARGS: &str =
    "null: the model's own processor settings bound what an image costs";
const EXPECT_NO_TEMPLATE: &str =
    "no template: the model's own renders the messages (one in the request could make a prompt larger than its bytes bound)";

/// The raw values of [`FIELDS`], checked for duplicates.
struct RequestFields<'a> {
    model: Option<&'a RawValue>,
    max_tokens: Option<&'a RawValue>,
    max_completion_tokens: Option<&'a RawValue>,
    max_output_tokens: Option<&'a RawValue>,
    n_predict: Option<&'a RawValue>,
    stream: Option<&'a RawValue>,
    stream_options: Option<&'a RawValue>,
    n: Option<&'a RawValue>,
    best_of: Option<&'a RawValue>,
    n_cmpl: Option<&'a RawValue>,
    prompt: Option<&'a RawValue>,
    messages: Option<&'a RawValue>,
    service_tier: Option<&'a RawValue>,
    input: Option<&'a RawValue>,
    /// Entries in the top-level object, ours or not.
    entries: usize,
}

impl<'a> RequestFields<'a> {
    fn read(body: &'a [u8]) -> Result<Self, RequestError> {
        let fields = top_level_fields(body, &FIELDS)?;
        let [model, max_tokens, max_completion_tokens, max_output_tokens, n_predict, stream, stream_options, n, best_of, n_cmpl, prompt, messages, chat_template, template_kwargs, service_tier, processor_kwargs, media_io_kwargs, input] =
            fields.values;
        // vLLM's per-request media settings (an image processor's larger
        // `max_pixels`, a video's `num_frames`) make one media part cost
        // far more prompt tokens than it is bounded by.
        for (field, raw) in [
            ("mm_processor_kwargs", processor_kwargs),
            ("media_io_kwargs", media_io_kwargs),
        ] {
            if raw.is_some_and(|raw| raw.get() != "null") {
                return Err(RequestError::InvalidField {
                    field,
                    expected: EXPECT_NO_PROCESSOR_KWARGS,
                });
            }
        }
        // vLLM renders a `chat_template` sent in the request (newer
        // versions only when started with `--trust-request-chat-template`),
        // and releases before 0.11 also take one from `chat_template_kwargs`:
        // a loop in it makes a prompt no bound on the body's bytes covers.
        if chat_template.is_some_and(|raw| raw.get() != "null") {
            return Err(RequestError::InvalidField {
                field: "chat_template",
                expected: EXPECT_NO_TEMPLATE,
            });
        }
        let kwargs_template = template_kwargs
            .and_then(|raw| {
                object_fields(
                    raw.get().as_bytes(),
                    &["chat_template"],
                    Keys::AlsoCaseVariants,
                )
                .ok()
            })
            .is_some_and(|kwargs| {
                kwargs.case_variant.is_some()
                    || kwargs.values[0].is_some_and(|raw| raw.get() != "null")
            });
        if kwargs_template {
            return Err(RequestError::InvalidField {
                field: "chat_template_kwargs",
                expected: EXPECT_NO_TEMPLATE,
            });
        }
        Ok(RequestFields {
            model,
            max_tokens,
            max_completion_tokens,
            max_output_tokens,
            n_predict,
            stream,
            stream_options,
            n,
            best_of,
            n_cmpl,
            prompt,
            messages,
            service_tier,
            input,
            entries: fields.entries,
        })
    }
}

/// The top-level fields `names` of a request body, none given twice or in
/// another case (see [`RequestError::DuplicateField`],
/// [`RequestError::CaseVariantField`]).
fn top_level_fields<'a, const N: usize>(
    body: &'a [u8],
    names: &[&str; N],
) -> Result<ObjectFields<'a, N>, RequestError> {
    let fields = object_fields(body, names, Keys::AlsoCaseVariants)?;
    let name = |index: usize| names.get(index).copied().unwrap_or_default().to_owned();
    if let Some(index) = fields.duplicate {
        return Err(RequestError::DuplicateField(name(index)));
    }
    if let Some(index) = fields.case_variant {
        return Err(RequestError::CaseVariantField(name(index)));
    }
    Ok(fields)
}

/// Parses the fields the gateway needs from a request body to `endpoint`
/// (a completion endpoint; see [`parse_completion_request`]). A Responses
/// API request is bounded by its body as the others are, so what names
/// state the body does not hold is refused (see `responses`).
pub fn parse_request<'a>(
    body: &'a [u8],
    endpoint: Option<&Endpoint>,
) -> Result<CompletionRequest<'a>, RequestError> {
    parse(body, endpoint == Some(&Endpoint::Responses))
}

/// Parses the fields the gateway needs from an OpenAI completion (or chat
/// completion) request body. The body is walked once, and `messages` once
/// more for its media parts (without allocating); `model` is borrowed from
/// it when it contains no escapes.
pub fn parse_completion_request(body: &[u8]) -> Result<CompletionRequest<'_>, RequestError> {
    parse(body, false)
}

fn parse(body: &[u8], is_responses: bool) -> Result<CompletionRequest<'_>, RequestError> {
    let fields = RequestFields::read(body)?;
    let model = match fields.model {
        None => return Err(RequestError::MissingModel),
        Some(raw) => parse_model(raw)?,
    };
    let include_usage = match fields.stream_options {
        None => false,
        Some(raw) => {
            let [include, continuous] = stream_options(raw)?.map_or([None; 2], |o| o.values);
            if typed::<Option<bool>>(continuous, CONTINUOUS_USAGE_PATH, EXPECT_BOOL)? == Some(true)
            {
                return Err(RequestError::InvalidField {
                    field: CONTINUOUS_USAGE_PATH,
                    expected: EXPECT_NO_CONTINUOUS_USAGE,
                });
            }
            typed::<Option<bool>>(include, INCLUDE_USAGE_PATH, EXPECT_BOOL)?.unwrap_or(false)
        }
    };
    if is_responses {
        responses::check(body)?;
        // What a server may read besides `max_output_tokens` (llama.cpp's
        // passes fields on) is capped like it, but OpenAI and this
        // project's server refuse them: said here, with where it goes.
        for (field, raw) in [
            ("max_tokens", fields.max_tokens),
            ("max_completion_tokens", fields.max_completion_tokens),
            ("n_predict", fields.n_predict),
        ] {
            // Even null: the rewrite would give it the budget too.
            if raw.is_some() {
                return Err(RequestError::InvalidField {
                    field,
                    expected: EXPECT_RESPONSES_BUDGET,
                });
            }
        }
    }
    // Read in field order, so a body with several bad fields names the
    // first, as before.
    let prompt_media;
    Ok(CompletionRequest {
        model,
        max_tokens: typed(fields.max_tokens, "max_tokens", EXPECT_COUNT)?,
        max_completion_tokens: typed(
            fields.max_completion_tokens,
            "max_completion_tokens",
            EXPECT_COUNT,
        )?,
        max_output_tokens: typed(fields.max_output_tokens, "max_output_tokens", EXPECT_COUNT)?,
        n_predict: typed(fields.n_predict, "n_predict", EXPECT_N_PREDICT)?,
        null_budget: [
            fields.max_tokens,
            fields.max_completion_tokens,
            fields.max_output_tokens,
            fields.n_predict,
        ]
        .into_iter()
        .flatten()
        .any(|raw| raw.get() == "null"),
        stream: typed::<Option<bool>>(fields.stream, "stream", EXPECT_BOOL)?.unwrap_or(false),
        include_usage,
        choices: positive(fields.n, "n")?
            .max(positive(fields.best_of, "best_of")?)
            .max(positive(fields.n_cmpl, "n_cmpl")?),
        prompts: {
            let (count, media) = if is_responses {
                (1, responses::input_media(fields.prompt, fields.input)?)
            } else {
                prompts(fields.prompt)?
            };
            prompt_media = media;
            count
        },
        media_parts: fields.messages.map_or(Ok(0), media::media_parts)? + prompt_media,
        service_tier: typed(fields.service_tier, "service_tier", EXPECT_STRING)?,
        responses: is_responses,
    })
}

/// A positive count (`n`, `best_of`, `n_cmpl`); absent or null is 1.
fn positive(raw: Option<&RawValue>, field: &'static str) -> Result<u64, RequestError> {
    match typed::<Option<u64>>(raw, field, EXPECT_POSITIVE)? {
        None => Ok(1),
        Some(0) => Err(RequestError::InvalidField {
            field,
            expected: EXPECT_POSITIVE,
        }),
        Some(count) => Ok(count),
    }
}

/// How many prompts `prompt` holds (a string or a token array is one; an
/// array of strings, of token arrays or of llama.cpp's prompt objects is
/// one per element), and the media parts of its prompt objects.
fn prompts(raw: Option<&RawValue>) -> Result<(u64, u64), RequestError> {
    let Some(raw) = raw else {
        return Ok((1, 0));
    };
    let invalid = RequestError::InvalidField {
        field: "prompt",
        expected: EXPECT_PROMPT,
    };
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text).map_err(|_| invalid.clone())?;
            let tokens = items.first().is_some_and(|item| {
                item.get()
                    .starts_with(|c: char| c == '-' || c.is_ascii_digit())
            });
            let count = if tokens {
                1
            } else {
                (items.len() as u64).max(1)
            };
            let media = items.iter().try_fold(0u64, |parts, item| {
                Ok::<_, RequestError>(parts + prompt_object_media(item, &invalid)?)
            })?;
            Ok((count, media))
        }
        Some(b'"') | Some(b'n') => Ok((1, 0)),
        _ => Err(invalid),
    }
}

/// The media of a llama.cpp prompt object
/// (`{"prompt_string": …, "multimodal_data": [<base64>, …]}`; anything else
/// has none): each item of its `multimodal_data` is an image or audio clip
/// whose tokens its bytes do not bound, so each counts as a media part
/// (anything else there that is not null, as one).
fn prompt_object_media(item: &RawValue, invalid: &RequestError) -> Result<u64, RequestError> {
    if !item.get().starts_with('{') {
        return Ok(0);
    }
    let fields = object_fields(
        item.get().as_bytes(),
        &["multimodal_data"],
        Keys::AlsoCaseVariants,
    )
    .map_err(|_| invalid.clone())?;
    if fields.duplicate.is_some() || fields.case_variant.is_some() {
        return Err(RequestError::DuplicateField(
            "prompt[].multimodal_data".into(),
        ));
    }
    Ok(match fields.values[0] {
        None => 0,
        Some(data) if data.get() == "null" => 0,
        Some(data) if data.get().starts_with('[') => {
            serde_json::from_str::<Vec<&RawValue>>(data.get())
                .map_err(|_| invalid.clone())?
                .len() as u64
        }
        Some(_) => 1,
    })
}

fn parse_model(raw: &RawValue) -> Result<Cow<'_, str>, RequestError> {
    let invalid = RequestError::InvalidField {
        field: "model",
        expected: EXPECT_MODEL,
    };
    match serde_json::from_str::<ModelName<'_>>(raw.get()) {
        Ok(ModelName(None)) => Err(RequestError::MissingModel),
        Ok(ModelName(Some(name))) if name.is_empty() => Err(invalid),
        Ok(ModelName(Some(name))) => Ok(name),
        Err(_) => Err(invalid),
    }
}

/// Types an already-validated raw value; absent is `T::default()`.
fn typed<'a, T>(
    raw: Option<&'a RawValue>,
    field: &'static str,
    expected: &'static str,
) -> Result<T, RequestError>
where
    T: serde::Deserialize<'a> + Default,
{
    match raw {
        None => Ok(T::default()),
        Some(raw) => serde_json::from_str(raw.get())
            .map_err(|_| RequestError::InvalidField { field, expected }),
    }
}

/// `stream_options`: `None` for null, its [`STREAM_OPTIONS`] otherwise.
fn stream_options(raw: &RawValue) -> Result<Option<ObjectFields<'_, 2>>, RequestError> {
    if raw.get() == "null" {
        return Ok(None);
    }
    let options = object_fields(
        raw.get().as_bytes(),
        &STREAM_OPTIONS,
        Keys::AlsoCaseVariants,
    )
    .map_err(|err| match err {
        ObjectError::NotAnObject => RequestError::InvalidField {
            field: "stream_options",
            expected: EXPECT_OBJECT,
        },
        ObjectError::Malformed(err) => err.into(),
    })?;
    let path = |index: usize| {
        [INCLUDE_USAGE_PATH, CONTINUOUS_USAGE_PATH]
            .get(index)
            .copied()
            .unwrap_or_default()
            .to_owned()
    };
    if let Some(index) = options.duplicate {
        return Err(RequestError::DuplicateField(path(index)));
    }
    if let Some(index) = options.case_variant {
        return Err(RequestError::CaseVariantField(path(index)));
    }
    Ok(Some(options))
}

/// One of the two fields a completion's budget is named in. Servers differ
/// in which they read: OpenAI's reasoning models (and Azure's) refuse
/// `max_tokens`, while some OpenAI-compatible servers know only
/// `max_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetField {
    #[default]
    MaxTokens,
    MaxCompletionTokens,
    /// The Responses API's, which no provider's chat completions read.
    #[serde(skip)]
    MaxOutputTokens,
}

impl BudgetField {
    /// The field a backend reads on `endpoint`, given the one its chat
    /// completions read (`chat`: a provider's `max_tokens_field`): the
    /// legacy completions endpoint knows only `max_tokens`, at OpenAI and
    /// everywhere that copies it.
    pub fn on(endpoint: Option<&Endpoint>, chat: BudgetField) -> BudgetField {
        match endpoint {
            Some(Endpoint::ChatCompletions) => chat,
            Some(Endpoint::Responses) => BudgetField::MaxOutputTokens,
            _ => BudgetField::MaxTokens,
        }
    }

    /// Whether a body naming the budget fields `present` (`max_tokens`,
    /// `max_completion_tokens`, `max_output_tokens`) lacks what a server
    /// reading this field reads: chat's servers read either of the first
    /// two (a field the body names is capped where it is: the client chose
    /// it), the Responses API's only the third.
    fn lacking_in(self, [max_tokens, max_completion_tokens, max_output_tokens]: [bool; 3]) -> bool {
        match self {
            BudgetField::MaxOutputTokens => !max_output_tokens,
            BudgetField::MaxTokens | BudgetField::MaxCompletionTokens => {
                !max_tokens && !max_completion_tokens
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BudgetField::MaxTokens => "max_tokens",
            BudgetField::MaxCompletionTokens => "max_completion_tokens",
            BudgetField::MaxOutputTokens => "max_output_tokens",
        }
    }
}

/// What the gateway changes in a request before forwarding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BodyRewrite<'a> {
    /// Cap the completion: every budget field present (`max_tokens`,
    /// `max_completion_tokens`, `max_output_tokens`, `n_predict`) gets this
    /// value; when the body lacks what `insert_as` stands for, it is added
    /// as `insert_as`.
    pub max_tokens: Option<u64>,
    /// The field a cap is added under (the one the backend reads): for
    /// chat's fields, when the body names neither `max_tokens` nor
    /// `max_completion_tokens` (a field the body names is capped where it
    /// is: the client chose it); `max_output_tokens`, when the body lacks
    /// it (the Responses API's servers read no other).
    pub insert_as: BudgetField,
    /// Make the upstream report usage on streams
    /// (`stream_options.include_usage = true`).
    pub force_include_usage: bool,
    /// The model's name upstream, where it differs from the public id (an
    /// external provider's model or deployment).
    pub model: Option<&'a str>,
    /// The budget field the upstream reads (an external provider's
    /// `max_tokens_field`). A body that carries its budget only under the
    /// other name has that key renamed to this one: a server that knows one
    /// field ignores the other, and would generate past the reservation.
    pub budget_as: Option<BudgetField>,
}

/// Returns `body` with `rewrite` applied. Values are replaced in place and
/// new entries are inserted right after the opening brace; every other byte
/// (other entries, whitespace, key spelling) is copied unchanged.
///
/// The body is expected to have passed [`parse_completion_request`]; this
/// re-checks only what it relies on (a JSON object, no duplicate fields,
/// `stream_options` an object or null when it must be edited).
pub fn rewrite_completion_request(
    body: &[u8],
    rewrite: &BodyRewrite<'_>,
) -> Result<Vec<u8>, RequestError> {
    let fields = RequestFields::read(body)?;
    // At most one edit per slot: [top-level insertion, max_tokens,
    // max_completion_tokens, max_output_tokens, n_predict, stream_options,
    // model, a budget field's key]. No allocation for the list.
    let mut edits: [Option<Edit<'_>>; 8] = [None; 8];
    let mut insert = TopInsert {
        max_tokens: None,
        stream_options: false,
    };

    if let Some(n) = rewrite.max_tokens {
        // `n_predict` alone is not enough: only llama.cpp reads it.
        let present = [
            fields.max_tokens.is_some(),
            fields.max_completion_tokens.is_some(),
            fields.max_output_tokens.is_some(),
        ];
        if rewrite.insert_as.lacking_in(present) {
            insert.max_tokens = Some((rewrite.insert_as, n));
        }
        let budget_fields = [
            fields.max_tokens,
            fields.max_completion_tokens,
            fields.max_output_tokens,
            fields.n_predict,
        ];
        for (slot, raw) in edits[1..5].iter_mut().zip(budget_fields) {
            *slot = raw
                .map(|raw| Edit::replace(body, raw, Text::Count(n)))
                .transpose()?;
        }
    }

    if let Some(wanted) = rewrite.budget_as {
        let (present, other) = match wanted {
            BudgetField::MaxTokens => (fields.max_tokens, fields.max_completion_tokens),
            BudgetField::MaxCompletionTokens => (fields.max_completion_tokens, fields.max_tokens),
            // The gateway role wrote the budget into it already.
            BudgetField::MaxOutputTokens => (fields.max_output_tokens, None),
        };
        if let (None, Some(value)) = (present, other) {
            edits[7] = Some(Edit::rename_key(body, value, wanted.as_str())?);
        }
    }

    if rewrite.force_include_usage {
        edits[5] = match fields.stream_options {
            None => {
                insert.stream_options = true;
                None
            }
            Some(raw) => match stream_options(raw)? {
                None => Some(Edit::replace(body, raw, Text::StreamOptions)?),
                Some(ObjectFields {
                    values: [include_usage, _],
                    entries,
                    ..
                }) => match include_usage {
                    Some(value) => Some(Edit::replace(body, value, Text::True)?),
                    None => {
                        // `raw` starts with its `{`: insert just after it.
                        let at = offset_in(body, raw.get())?.saturating_add(1);
                        Some(Edit::insert(
                            at,
                            Text::IncludeUsageEntry { comma: entries > 0 },
                        ))
                    }
                },
            },
        };
    }

    if let Some(model) = rewrite.model {
        let raw = fields.model.ok_or(RequestError::MissingModel)?;
        edits[6] = Some(Edit::replace(body, raw, Text::Str(model))?);
    }

    if insert.max_tokens.is_some() || insert.stream_options {
        let at = body
            .iter()
            .position(|b| *b == b'{')
            .ok_or_else(internal_error)?
            .saturating_add(1);
        edits[0] = Some(Edit::insert(
            at,
            Text::Top {
                insert,
                comma: fields.entries > 0,
            },
        ));
    }

    // An insertion and a replacement may start at one offset (a renamed
    // first key): the insertion, which ends there, goes first.
    edits.sort_unstable_by_key(|edit| edit.map(|e| (e.start, e.end)));
    let mut out = Vec::with_capacity(body.len().saturating_add(64));
    let mut cursor = 0;
    for edit in edits.iter().flatten() {
        let kept = body.get(cursor..edit.start).ok_or_else(internal_error)?;
        out.extend_from_slice(kept);
        edit.text.write(&mut out);
        cursor = edit.end;
    }
    out.extend_from_slice(body.get(cursor..).ok_or_else(internal_error)?);
    Ok(out)
}

/// Offsets come from slices of `body` itself, so they are always in range;
/// this error exists so that a broken invariant is an error, not a panic.
fn internal_error() -> RequestError {
    RequestError::Malformed {
        message: "internal error: rewrite offset out of range".to_owned(),
        line: 0,
        column: 0,
    }
}

/// Byte offset of `inner` within `outer`; `inner` must be a subslice
/// (raw values borrowed from the body are).
fn offset_in(outer: &[u8], inner: &str) -> Result<usize, RequestError> {
    let start = (inner.as_ptr() as usize)
        .checked_sub(outer.as_ptr() as usize)
        .ok_or_else(internal_error)?;
    match start.checked_add(inner.len()) {
        Some(end) if end <= outer.len() => Ok(start),
        _ => Err(internal_error()),
    }
}

/// Replace `body[start..end]` with `text` (an insertion when start == end).
#[derive(Clone, Copy)]
struct Edit<'a> {
    start: usize,
    end: usize,
    text: Text<'a>,
}

impl<'a> Edit<'a> {
    fn replace(body: &[u8], raw: &RawValue, text: Text<'a>) -> Result<Self, RequestError> {
        let start = offset_in(body, raw.get())?;
        Ok(Edit {
            start,
            end: start.saturating_add(raw.get().len()),
            text,
        })
    }

    /// Replaces the key of the top-level entry whose value is `value`. The
    /// key is one of [`FIELDS`] (it unescaped to one), so its spelling holds
    /// no `"`: the key is the quoted run before the `:` that precedes
    /// `value`.
    fn rename_key(body: &[u8], value: &RawValue, key: &'a str) -> Result<Self, RequestError> {
        let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
        let before = body
            .get(..offset_in(body, value.get())?)
            .ok_or_else(internal_error)?;
        let colon = before
            .iter()
            .rposition(|b| !is_space(b))
            .filter(|&at| before.get(at) == Some(&b':'))
            .ok_or_else(internal_error)?;
        let close = before
            .get(..colon)
            .and_then(|head| head.iter().rposition(|b| !is_space(b)))
            .filter(|&at| before.get(at) == Some(&b'"'))
            .ok_or_else(internal_error)?;
        let open = before
            .get(..close)
            .and_then(|head| head.iter().rposition(|b| *b == b'"'))
            .ok_or_else(internal_error)?;
        Ok(Edit {
            start: open,
            end: close.saturating_add(1),
            text: Text::Str(key),
        })
    }

    fn insert(at: usize, text: Text<'a>) -> Self {
        Edit {
            start: at,
            end: at,
            text,
        }
    }
}

#[derive(Clone, Copy)]
struct TopInsert {
    max_tokens: Option<(BudgetField, u64)>,
    stream_options: bool,
}

#[derive(Clone, Copy)]
enum Text<'a> {
    Count(u64),
    /// A JSON string.
    Str(&'a str),
    True,
    /// Replaces a null `stream_options`.
    StreamOptions,
    /// Inserted after the `{` of an existing `stream_options`.
    IncludeUsageEntry {
        comma: bool,
    },
    /// Inserted after the top-level `{`.
    Top {
        insert: TopInsert,
        comma: bool,
    },
}

const STREAM_OPTIONS_VALUE: &[u8] = br#"{"include_usage":true}"#;

impl Text<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        match *self {
            Text::Count(n) => push_u64(out, n),
            // Writing a string into a Vec cannot fail.
            Text::Str(text) => {
                let _ = serde_json::to_writer(&mut *out, text);
            }
            Text::True => out.extend_from_slice(b"true"),
            Text::StreamOptions => out.extend_from_slice(STREAM_OPTIONS_VALUE),
            Text::IncludeUsageEntry { comma } => {
                out.extend_from_slice(br#""include_usage":true"#);
                if comma {
                    out.push(b',');
                }
            }
            Text::Top { insert, comma } => {
                let mut first = true;
                if let Some((field, n)) = insert.max_tokens {
                    out.push(b'"');
                    out.extend_from_slice(field.as_str().as_bytes());
                    out.extend_from_slice(b"\":");
                    push_u64(out, n);
                    first = false;
                }
                if insert.stream_options {
                    if !first {
                        out.push(b',');
                    }
                    out.extend_from_slice(br#""stream_options":"#);
                    out.extend_from_slice(STREAM_OPTIONS_VALUE);
                }
                if comma {
                    out.push(b',');
                }
            }
        }
    }
}

/// Appends the decimal digits of `n` (no allocation, no formatting machinery).
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20]; // u64::MAX has 20 digits
    let mut len = 0;
    for slot in digits.iter_mut().rev() {
        // `n % 10 < 10`, so neither the cast nor the addition can overflow.
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
        len += 1;
        if n == 0 {
            break;
        }
    }
    let start = digits.len().saturating_sub(len);
    out.extend_from_slice(digits.get(start..).unwrap_or_default());
}

// ---------------------------------------------------------------------------
// Top-level object walking, shared with the usage and SSE parsers.
// ---------------------------------------------------------------------------

/// The raw values of the requested keys of one JSON object.
#[derive(Debug)]
pub(crate) struct ObjectFields<'a, const N: usize> {
    /// `values[i]` is the value of `names[i]`, borrowed from the input
    /// (the last one when the key is repeated).
    pub(crate) values: [Option<&'a RawValue>; N],
    /// Index of the first requested key seen more than once.
    pub(crate) duplicate: Option<usize>,
    /// Index of the first requested key also spelled in another case
    /// (`MAX_TOKENS`; see [`folds_to`]), which the walk does not read;
    /// looked for only with [`Keys::AlsoCaseVariants`].
    pub(crate) case_variant: Option<usize>,
    /// Number of entries in the object, requested or not.
    pub(crate) entries: usize,
}

/// Why [`object_fields`] could not read an object.
#[derive(Debug)]
pub(crate) enum ObjectError {
    /// Valid JSON, but not an object.
    NotAnObject,
    /// Not valid JSON, or trailing bytes after the value.
    Malformed(serde_json::Error),
}

/// How a walk compares keys with the names asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keys {
    /// Exactly (after unescaping): what an upstream's answer is read with.
    Exact,
    /// Exactly, and also noting a name spelled in another case
    /// ([`ObjectFields::case_variant`], see [`folds_to`]): what a client's
    /// request is read with, since the server it goes to may match keys
    /// regardless of case.
    AlsoCaseVariants,
}

/// Walks the JSON object in `json` once and returns the raw values of the
/// keys in `names`. Keys are compared after unescaping, as `keys` says;
/// values of other keys are skipped without allocating (serde's
/// `IgnoredAny`). Raw values borrow from `json`, so their offsets in it can
/// be recovered.
pub(crate) fn object_fields<'a, const N: usize>(
    json: &'a [u8],
    names: &[&str; N],
    keys: Keys,
) -> Result<ObjectFields<'a, N>, ObjectError> {
    let first = json
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        // Error path only: tell "valid JSON, wrong type" from "not JSON".
        return Err(match serde_json::from_slice::<IgnoredAny>(json) {
            Ok(_) => ObjectError::NotAnObject,
            Err(err) => ObjectError::Malformed(err),
        });
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    let fields = de
        .deserialize_map(FieldsVisitor {
            names,
            keys,
            marker: PhantomData,
        })
        .map_err(ObjectError::Malformed)?;
    de.end().map_err(ObjectError::Malformed)?;
    Ok(fields)
}

struct FieldsVisitor<'n, 'a, const N: usize> {
    names: &'n [&'n str; N],
    keys: Keys,
    marker: PhantomData<&'a ()>,
}

impl<'de, const N: usize> Visitor<'de> for FieldsVisitor<'_, 'de, N> {
    type Value = ObjectFields<'de, N>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = ObjectFields {
            values: [None; N],
            duplicate: None,
            case_variant: None,
            entries: 0,
        };
        let seed = || KeyIndex {
            names: self.names.as_slice(),
            keys: self.keys,
        };
        while let Some(key) = map.next_key_seed(seed())? {
            fields.entries = fields.entries.saturating_add(1);
            let exact = match key {
                Key::Exact(index) => fields.values.get_mut(index).map(|slot| (index, slot)),
                Key::CaseVariant(index) => {
                    fields.case_variant.get_or_insert(index);
                    None
                }
                Key::Other => None,
            };
            match exact {
                Some((index, slot)) => {
                    if slot.is_some() && fields.duplicate.is_none() {
                        fields.duplicate = Some(index);
                    }
                    *slot = Some(map.next_value::<&'de RawValue>()?);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(fields)
    }
}

/// A key of a walked object, against the names asked for.
enum Key {
    Exact(usize),
    /// The name at this index in another case.
    CaseVariant(usize),
    Other,
}

impl Key {
    /// Whether it is one of the names, in any case: a count that must not
    /// fall short of what a case-blind server reads counts both.
    fn is_named(&self) -> bool {
        !matches!(self, Key::Other)
    }
}

/// Whether `key` is `name` (ASCII lowercase) under the case folding of
/// parsers that match keys regardless of case: Go's `encoding/json` (Ollama
/// and other Go servers, many proxies) reads `MAX_TOKENS`, `Max_Tokens` and
/// `max_to\u212Aens` (KELVIN SIGN) as `max_tokens`, the last one written
/// winning, so a gateway that read only the exact spelling would cap one
/// field while the server obeyed another.
fn folds_to(key: &str, name: &str) -> bool {
    // Nearly every key is ASCII: a length check settles most at once.
    if key.is_ascii() {
        return key.eq_ignore_ascii_case(name);
    }
    let mut name = name.chars();
    key.chars()
        .map(|c| match c {
            '\u{212A}' => 'k',
            '\u{17F}' => 's',
            c => c.to_ascii_lowercase(),
        })
        .all(|c| name.next() == Some(c))
        && name.next().is_none()
}

/// Deserializes a key into its index in a name list, without allocating:
/// serde_json hands escaped keys to `visit_str` from its scratch buffer.
struct KeyIndex<'n> {
    names: &'n [&'n str],
    keys: Keys,
}

impl<'de> DeserializeSeed<'de> for KeyIndex<'_> {
    type Value = Key;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyIndex<'_> {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        if let Some(index) = self.names.iter().position(|name| *name == key) {
            return Ok(Key::Exact(index));
        }
        if self.keys == Keys::Exact {
            return Ok(Key::Other);
        }
        Ok(self
            .names
            .iter()
            .position(|name| folds_to(key, name))
            .map_or(Key::Other, Key::CaseVariant))
    }
}

/// `model`: a string (borrowed when unescaped) or null.
struct ModelName<'a>(Option<Cow<'a, str>>);

impl<'de> serde::Deserialize<'de> for ModelName<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ModelNameVisitor)
    }
}

struct ModelNameVisitor;

impl<'de> Visitor<'de> for ModelNameVisitor {
    type Value = ModelName<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECT_MODEL)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(ModelName(Some(Cow::Borrowed(v))))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(ModelName(Some(Cow::Owned(v.to_owned()))))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(ModelName(None))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
