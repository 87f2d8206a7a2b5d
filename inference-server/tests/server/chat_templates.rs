//! Which chat template the server uses: `--chat-template FILE` over the
//! file's own, and for a Gemma 3 file that ships without one, the built-in
//! Gemma 3 template; a template that does not parse stops the server.

use std::path::PathBuf;
use std::process::Command;

use maas_testkit::{get, inference_server_binary, InferenceServer};
use serde_json::{json, Value};

use crate::support::*;

/// `text` in a fresh temporary file.
fn template_file(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("maas-{name}-{}.jinja", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_gemma_file_without_a_template_chats_with_the_built_in_gemma_template() {
    let server = gemma_server(&[]);
    assert!(
        server
            .log()
            .contains("no chat template in the file; using the built-in gemma3 template"),
        "{}",
        server.log()
    );
    assert_eq!(
        get(&server.url("/health")).json()["chat_template"],
        "builtin"
    );

    let question = "What is the capital of France?";
    let params = json!({"model": GEMMA, "temperature": 0, "max_tokens": 8});
    let mut chat_req = params.clone();
    merge(
        &mut chat_req,
        json!({"messages": [
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": question},
        ]}),
    );
    let chat = tokens_and_text(&chat(&server, &chat_req));
    // Gemma has no system turn: its template folds the system message into
    // the first user turn. The template writes <bos>, and so does the
    // tokenizer (add_bos_token): the prompt must hold exactly one.
    let mut by_hand = params;
    merge(
        &mut by_hand,
        json!({"prompt": format!(
            "<start_of_turn>user\nAnswer in one word.\n\n{question}<end_of_turn>\n<start_of_turn>model\n"
        )}),
    );
    let by_hand = tokens_and_text(&completion(&server, &by_hand));
    assert_eq!(
        chat, by_hand,
        "chat (prompt tokens, text) vs the hand-rendered prompt"
    );
}

#[test]
fn a_chat_template_option_replaces_the_files_template() {
    let template = template_file(
        "good-template",
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}\
         {% if add_generation_prompt %}assistant:{% endif %}",
    );
    let server = InferenceServer::start(&["--chat-template", template.to_str().unwrap()]);
    std::fs::remove_file(&template).unwrap();
    assert!(
        server
            .log()
            .contains("using the chat template from --chat-template"),
        "{}",
        server.log()
    );
    assert_eq!(
        get(&server.url("/health")).json()["chat_template"],
        "option"
    );

    let chat = tokens_and_text(&chat(
        &server,
        &chat_body("Name a colour.", json!({"max_tokens": 6})),
    ));
    let by_hand = tokens_and_text(&completion(
        &server,
        &json!({
            "model": MODEL,
            "prompt": "user: Name a colour.\nassistant:",
            "temperature": 0,
            "max_tokens": 6,
        }),
    ));
    assert_eq!(
        chat, by_hand,
        "chat (prompt tokens, text) vs the hand-rendered prompt"
    );
}

#[test]
fn without_any_template_chats_are_refused_until_one_is_given() {
    // The embedded model with its template key renamed: a llama file without
    // a template, for which there is no built-in one.
    let without = || {
        edited_model("no-template", |bytes| {
            let key = b"tokenizer.chat_template";
            let at = bytes.windows(key.len()).position(|w| w == key).unwrap();
            bytes[at + key.len() - 1] = b'X';
        })
    };
    let launch = |model: &std::path::Path, args: &[&str]| {
        let launch = maas_testkit::InferenceLaunch {
            model: model.to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
            ..maas_testkit::InferenceLaunch::default_model()
        };
        InferenceServer::launch(&launch).unwrap_or_else(|e| panic!("{e}"))
    };

    let model = without();
    let server = launch(&model, &[]);
    std::fs::remove_file(&model).unwrap();
    assert!(
        server.log().contains("none built in for llama"),
        "{}",
        server.log()
    );
    assert!(get(&server.url("/health")).json()["chat_template"].is_null());
    let r = chat(&server, &chat_body("hi", json!({"max_tokens": 2})));
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        r.json()["error"]["message"],
        "This model has no chat template; use /v1/completions."
    );

    let template = template_file("rescue-template", "{{ messages[0].content }}");
    let model = without();
    let server = launch(&model, &["--chat-template", template.to_str().unwrap()]);
    std::fs::remove_file(&model).unwrap();
    std::fs::remove_file(&template).unwrap();
    assert_eq!(
        get(&server.url("/health")).json()["chat_template"],
        "option"
    );
    let r = chat(&server, &chat_body("hi", json!({"max_tokens": 2})));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_chat_template_that_does_not_parse_or_cannot_be_read_stops_the_server() {
    let run = |path: &std::path::Path| {
        let out = Command::new(inference_server_binary())
            .args(["--port", "0", "--chat-template"])
            .arg(path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let broken = template_file(
        "broken-template",
        "{% for m in messages %}\n{{ m.content }}\n",
    );
    let (code, err) = run(&broken);
    std::fs::remove_file(&broken).unwrap();
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!("--chat-template {}", broken.display()))
            && err.contains("does not compile")
            && err.contains("(in chat_template:2)"),
        "{err}"
    );

    let missing = std::path::Path::new("/nonexistent/template.jinja");
    let (code, err) = run(missing);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--chat-template /nonexistent/template.jinja") && err.contains("No such file"),
        "{err}"
    );
}

/// `chat_template_kwargs` reach the template as variables: Qwen 3's
/// `enable_thinking: false` makes its template open the answer with an
/// empty thinking block, so the model answers without thinking. (The
/// published Qwen 3 template, given to the SmolLM2 server.)
#[test]
fn chat_template_kwargs_reach_the_template() {
    let path = format!(
        "{}/tests/chat_template_reference/qwen3.jinja",
        env!("CARGO_MANIFEST_DIR")
    );
    let server = InferenceServer::start(&["--chat-template", &path]);
    let prompt_tokens = |kwargs: Value| {
        let mut body = chat_body("Name a colour.", json!({"max_tokens": 1}));
        body["chat_template_kwargs"] = kwargs;
        let r = chat(&server, &body);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["usage"]["prompt_tokens"].as_u64().unwrap()
    };
    let thinking = prompt_tokens(Value::Null);
    assert_eq!(prompt_tokens(json!({"enable_thinking": true})), thinking);
    // `<think>\n\n</think>\n\n` added after the generation prompt.
    assert!(
        prompt_tokens(json!({"enable_thinking": false})) > thinking,
        "no thinking block"
    );
    let mut body = chat_body("Hi", json!({}));
    body["chat_template_kwargs"] = json!({"messages": []});
    let r = chat(&server, &body);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["param"], "chat_template_kwargs");
}

/// A reasoning model's thinking goes out as `reasoning_content`, apart from
/// `content`: here a template that opens the thinking in the prompt, as
/// DeepSeek-R1's do (`…<think>\n`), so everything SmolLM2 writes (it never
/// closes the tag) is thinking, streamed or whole; `--reasoning-format
/// none` gives it all as content; a template that writes no thinking (the
/// file's own) has no `reasoning_content`.
#[test]
fn thinking_goes_out_as_reasoning_content() {
    let template = template_file(
        "thinking-template",
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}\
         {% if add_generation_prompt %}assistant: <think>\n{% endif %}",
    );
    let body = chat_body("Why is the sky blue?", json!({"max_tokens": 12}));
    let whole = |server: &InferenceServer| {
        let r = chat(server, &body);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["choices"][0]["message"].clone()
    };

    let server = InferenceServer::start(&["--chat-template", template.to_str().unwrap()]);
    let message = whole(&server);
    let thought = message["reasoning_content"].as_str().unwrap().to_string();
    assert!(!thought.is_empty(), "{message}");
    assert_eq!(message["content"], "", "{message}");
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let s = parse_stream(&chat(&server, &streamed));
    let streamed_thought: String = s
        .chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["reasoning_content"].as_str())
        .collect();
    assert_eq!(streamed_thought, thought);
    assert_eq!(s.text, "", "no content");
    // A grammar writes the answer from the first token: content.
    let mut formatted = body.clone();
    formatted["response_format"] = json!({"type": "json_object"});
    formatted["max_tokens"] = json!(40);
    let r = chat(&server, &formatted);
    assert_eq!(r.status, 200, "{}", r.text());
    let message = &r.json()["choices"][0]["message"];
    assert!(message.get("reasoning_content").is_none(), "{message}");
    assert!(
        message["content"].as_str().unwrap().starts_with('{'),
        "{message}"
    );
    drop(server);

    let raw = InferenceServer::start(&[
        "--chat-template",
        template.to_str().unwrap(),
        "--reasoning-format",
        "none",
    ]);
    let message = whole(&raw);
    assert!(message.get("reasoning_content").is_none(), "{message}");
    assert_eq!(message["content"].as_str(), Some(thought.as_str()));
    drop(raw);
    std::fs::remove_file(&template).unwrap();

    let plain = InferenceServer::start(&[]);
    let message = whole(&plain);
    assert!(message.get("reasoning_content").is_none(), "{message}");
}
