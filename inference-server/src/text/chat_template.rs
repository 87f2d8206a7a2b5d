//! Jinja chat templates, rendered the way Hugging Face `apply_chat_template`
//! does: `trim_blocks` and `lstrip_blocks` on, loop controls, Python string
//! and dict methods (`.strip()`, `.startswith()`, `.items()`...),
//! `raise_exception(msg)`, and the variables `messages`,
//! `add_generation_prompt`, `bos_token` and `eos_token`.
//!
//! The template is parsed once in `new`, so a broken template fails at model
//! load rather than on the first request.
//!
//! Which template a server uses is decided once at start ([`choose_chat_template`]): the
//! operator's `--chat-template` file, else the GGUF's own, else the one this
//! crate carries for the architecture (Gemma 3 files often ship without one),
//! else none, and chat requests are refused.

use std::collections::BTreeMap;
use std::fmt;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
use minijinja::{Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use super::error::TextError;

/// No file extension, so minijinja applies no HTML auto-escaping.
const TEMPLATE_NAME: &str = "chat_template";

/// The families' published templates, by `general.architecture`, for files
/// that carry none. tests/chat_template_reference.rs renders each against
/// transformers' `apply_chat_template`.
const BUILTIN: &[(&str, &str)] = &[("gemma3", include_str!("chat_templates/gemma3.jinja"))];

/// The template this crate carries for `architecture`, if any.
pub fn builtin_template(architecture: &str) -> Option<&'static str> {
    BUILTIN
        .iter()
        .find(|(arch, _)| *arch == architecture)
        .map(|(_, source)| *source)
}

/// Where the template in use came from, highest precedence first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplateOrigin {
    /// The operator's `--chat-template FILE`.
    Option,
    /// The GGUF's `tokenizer.chat_template`.
    File,
    /// [`builtin_template`] for the file's architecture.
    Builtin,
}

/// What [`choose_chat_template`] chooses from.
pub struct TemplateCandidates<'a> {
    /// The `--chat-template` file's text.
    pub option: Option<&'a str>,
    /// The GGUF's template, already parsed.
    pub file: Option<ChatTemplate>,
    pub architecture: &'a str,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

/// The template to serve chats with and where it came from; `None` when
/// there is none to use.
pub fn choose_chat_template(
    candidates: TemplateCandidates<'_>,
) -> Result<Option<(ChatTemplate, TemplateOrigin)>, TextError> {
    let TemplateCandidates {
        option,
        file,
        architecture,
        bos_token,
        eos_token,
    } = candidates;
    if let Some(source) = option {
        return ChatTemplate::new(source, bos_token, eos_token)
            .map(|t| Some((t, TemplateOrigin::Option)));
    }
    if let Some(template) = file {
        return Ok(Some((template, TemplateOrigin::File)));
    }
    match builtin_template(architecture) {
        Some(source) => ChatTemplate::new(source, bos_token, eos_token)
            .map(|t| Some((t, TemplateOrigin::Builtin))),
        None => Ok(None),
    }
}

/// One message as chat templates read it (Hugging Face's convention):
/// fields a message lacks are absent, not `none`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// An assistant's earlier calls, OpenAI's shape with each `arguments`
    /// parsed into an object where it is JSON (templates write it with
    /// `tojson`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
    /// A `tool` message: the call it answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            tool_calls: None,
            tool_call_id: None,
        }
    }
}

pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

/// Marks an error as coming from the template's own `raise_exception`, so
/// `render` can tell "the template rejects these messages" from a bug.
#[derive(Debug)]
struct RaisedByTemplate(String);

impl fmt::Display for RaisedByTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedByTemplate {}

fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(
        minijinja::Error::new(ErrorKind::InvalidOperation, message.clone())
            .with_source(RaisedByTemplate(message)),
    )
}

/// The work one render may do (minijinja's fuel: about one per instruction
/// and one per 64 bytes of data it makes), so a template from a file, or
/// one a message steers, cannot run forever or fill the memory (nested
/// loops, a string doubled in a loop): at most about 128 MB. A real
/// template renders a conversation as long as any context holds with a
/// small part of it.
const RENDER_FUEL: u64 = 2_000_000;

impl ChatTemplate {
    pub fn new(
        source: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self, TextError> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(TextError::TemplateSyntax)?;
        env.set_syntax(syntax);
        env.set_fuel(Some(RENDER_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(TextError::TemplateSyntax)?;
        Ok(ChatTemplate {
            env,
            source: source.to_owned(),
            bos_token,
            eos_token,
        })
    }

    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TextError> {
        self.render_with(
            messages,
            None,
            &serde_json::Map::new(),
            add_generation_prompt,
        )
    }

    /// Whether the template renders a `tools` list itself (otherwise the
    /// API describes the tools in a system message).
    pub fn renders_tools(&self) -> bool {
        self.source.contains("tools")
    }

    /// The template's source text (the API reads which tool-call format
    /// the model family uses from it).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// `render` with `tools` (OpenAI's shape) in the context, as Hugging
    /// Face's `apply_chat_template(tools=…)` passes them, and further
    /// variables, as `apply_chat_template(**kwargs)` passes them (Qwen 3's
    /// `enable_thinking`). The template's own variables win over them.
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
        extra: &serde_json::Map<String, serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String, TextError> {
        let mut ctx: BTreeMap<&str, Value> = extra
            .iter()
            .map(|(k, v)| (k.as_str(), Value::from(Serde(v))))
            .collect();
        ctx.insert("messages", Value::from(Serde(messages)));
        if let Some(tools) = tools {
            ctx.insert("tools", Value::from(Serde(tools)));
        }
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        // Absent rather than `none`, which would render as the text "none".
        if let Some(bos) = &self.bos_token {
            ctx.insert("bos_token", Value::from(bos.as_str()));
        }
        if let Some(eos) = &self.eos_token {
            ctx.insert("eos_token", Value::from(eos.as_str()));
        }
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(TextError::TemplateRender)?;
        template.render(Value::from(ctx)).map_err(render_error)
    }
}

fn render_error(err: minijinja::Error) -> TextError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        if let Some(raised) = e.downcast_ref::<RaisedByTemplate>() {
            return TextError::TemplateRaised(raised.0.clone());
        }
        source = e.source();
    }
    TextError::TemplateRender(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::fixtures;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn a_template_that_would_run_forever_or_fill_the_memory_fails_its_render() {
        let messages = [ChatMessage::new("user", "hi")];
        for source in [
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
            "{% for i in range(100000) %}{{ 'x' * 10000000 }}{% endfor %}",
            "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
        ] {
            let template = ChatTemplate::new(source, None, None).unwrap();
            let err = template.render(&messages, true).unwrap_err();
            assert!(matches!(err, TextError::TemplateRender(_)), "{source}: {err:?}");
            assert!(err.to_string().contains("fuel"), "{source}: {err}");
        }
    }

    #[test]
    fn renders_chatml() {
        let template = ChatTemplate::new(CHATML, None, None).unwrap();
        let messages = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi"),
        ];
        assert_eq!(
            template.render(&messages, true).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert!(!template
            .render(&messages, false)
            .unwrap()
            .ends_with("assistant\n"));
    }

    #[test]
    fn raise_exception_carries_the_message() {
        let source = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}ok";
        let template = ChatTemplate::new(source, None, None).unwrap();
        let err = template
            .render(&[ChatMessage::new("assistant", "x")], false)
            .unwrap_err();
        assert!(matches!(err, TextError::TemplateRaised(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "Conversation roles must alternate user/assistant/user/assistant/..."
        );
        assert_eq!(
            template
                .render(&[ChatMessage::new("user", "x")], false)
                .unwrap(),
            "ok"
        );
    }

    #[test]
    fn syntax_error_fails_at_load() {
        let err =
            ChatTemplate::new("{% for m in messages %}{{ m.content }}", None, None).unwrap_err();
        assert!(matches!(err, TextError::TemplateSyntax(_)), "{err:?}");
    }

    #[test]
    fn other_runtime_errors_are_render_errors() {
        let template = ChatTemplate::new("{{ messages[0].content + 1 }}", None, None).unwrap();
        let err = template
            .render(&[ChatMessage::new("user", "x")], false)
            .unwrap_err();
        assert!(matches!(err, TextError::TemplateRender(_)), "{err:?}");
    }

    #[test]
    fn python_methods_and_loop_controls() {
        let source = "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}{{ m.content.strip().upper() }}{% if m.role.startswith('sys') %}!{% endif %};{% endfor %}";
        let template = ChatTemplate::new(source, None, None).unwrap();
        let messages = [
            ChatMessage::new("system", "  a "),
            ChatMessage::new("user", "b"),
            ChatMessage::new("user", "c"),
        ];
        assert_eq!(template.render(&messages, false).unwrap(), "A!;B;");
    }

    #[test]
    fn special_tokens_and_block_whitespace() {
        let source = "{{ bos_token }}\n{% for m in messages %}\n    {{ m.content }}{{ eos_token }}\n{% endfor %}";
        let with = ChatTemplate::new(source, Some("<s>".into()), Some("</s>".into())).unwrap();
        let messages = [ChatMessage::new("user", "x")];
        // trim_blocks eats the newline after a block tag, lstrip_blocks the
        // indentation before one, as in Hugging Face's environment.
        assert_eq!(with.render(&messages, false).unwrap(), "<s>\n    x</s>\n");
        let without = ChatTemplate::new(source, None, None).unwrap();
        assert_eq!(without.render(&messages, false).unwrap(), "\n    x\n");
    }

    #[test]
    fn is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ChatTemplate>();
    }

    fn candidates<'a>(
        option: Option<&'a str>,
        file: Option<&str>,
        architecture: &'a str,
    ) -> TemplateCandidates<'a> {
        TemplateCandidates {
            option,
            file: file.map(|s| ChatTemplate::new(s, None, None).unwrap()),
            architecture,
            bos_token: Some("<bos>".into()),
            eos_token: Some("<eos>".into()),
        }
    }

    #[test]
    fn the_option_beats_the_file_which_beats_the_builtin() {
        let hi = [ChatMessage::new("user", "hi")];
        let chosen = |c| {
            let (t, origin) = choose_chat_template(c).unwrap().unwrap();
            (t.render(&hi, false).unwrap(), origin)
        };
        assert_eq!(
            chosen(candidates(Some("opt"), Some("file"), "gemma3")),
            ("opt".to_string(), TemplateOrigin::Option)
        );
        assert_eq!(
            chosen(candidates(None, Some("file"), "gemma3")),
            ("file".to_string(), TemplateOrigin::File)
        );
        assert_eq!(
            chosen(candidates(None, None, "gemma3")),
            (
                "<bos><start_of_turn>user\nhi<end_of_turn>\n".to_string(),
                TemplateOrigin::Builtin
            )
        );
        assert!(choose_chat_template(candidates(None, None, "llama"))
            .unwrap()
            .is_none());
        assert!(matches!(
            choose_chat_template(candidates(Some("{% if %}"), None, "llama")),
            Err(TextError::TemplateSyntax(_))
        ));
    }

    #[test]
    fn gemma_folds_the_system_message_into_the_first_user_turn() {
        let source = builtin_template("gemma3").unwrap();
        let template = ChatTemplate::new(source, Some("<bos>".into()), None).unwrap();
        let messages = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi"),
        ];
        assert_eq!(
            template.render(&messages, true).unwrap(),
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn real_model_template_renders_chatml_with_default_system_prompt() {
        let spec = fixtures::smollm_spec();
        let source = spec.chat_template.as_deref().unwrap();
        let template = ChatTemplate::new(source, None, None).unwrap();
        let rendered = template
            .render(&[ChatMessage::new("user", "Hello, how are you?")], true)
            .unwrap();
        assert_eq!(rendered, fixtures::SMOLLM_CHAT_PROMPT);
    }
}
